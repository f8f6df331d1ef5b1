"""What each adapter really costs against full fine-tuning: parameters, step time, memory, latency merged and not."""

from .costs import FULL, Settings, measure_method
from .report import COLUMNS, markdown_table
from .run import check_methods, measure

__all__ = ["COLUMNS", "FULL", "Settings", "check_methods", "markdown_table", "measure", "measure_method"]
