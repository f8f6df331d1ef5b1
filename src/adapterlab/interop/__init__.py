"""Other tools' formats and command lines: PEFT's adapter folders (`peft/`) and LLM-Adapters' (`llm_adapters/`)."""
