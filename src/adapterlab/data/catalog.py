"""The data sets `adapterlab data pull` can fetch: LLM-Adapters' published files at one pinned commit, each with
the digest it must have, and where it goes under a data root (math/, commonsense/, as eval and compare read them).

Digests were computed from that commit's snapshot: sha256 where the snapshot held the file, else the git blob id
the commit's tree records (the SHA-1 of "blob <size>\\0" + the bytes), which pins the bytes just as well.
"""

from __future__ import annotations

from dataclasses import dataclass

REPOSITORY = "AGI-Edgerunners/LLM-Adapters"
COMMIT = "816657208af4db747803f87ba40a4c71383fed7a"  # master, 2024-03-10
BASE_URL = f"https://raw.githubusercontent.com/{REPOSITORY}/{COMMIT}"


@dataclass(frozen=True)
class RemoteFile:
    """One published file: where it goes under a data root, its path in the repository and its digest."""

    dest: str  # e.g. "math/gsm8k.json"
    source: str  # e.g. "dataset/gsm8k/test.json"
    digest: str  # "sha256:<hex>" or "git-sha1:<hex>"


def _eval(dest: str, folder: str, test: str, train: str | None = None) -> tuple[RemoteFile, ...]:
    """A test set (and its training set, saved as train_<name>, which compare reads) of dataset/<folder>/."""
    files = [RemoteFile(f"{dest}.json", f"dataset/{folder}/test.json", test)]
    if train:
        root, _, name = dest.rpartition("/")
        files.append(RemoteFile(f"{root}/train_{name}.json", f"dataset/{folder}/train.json", train))
    return tuple(files)


def _training(dest: str, name: str, digest: str) -> tuple[RemoteFile, ...]:
    return (RemoteFile(dest, f"ft-training_set/{name}.json", digest),)


# Keys are eval's known names (gsm8k, arc-e, siqa, ...) and the training sets by LLM-Adapters' file names.
CATALOG: dict[str, tuple[RemoteFile, ...]] = {
    "gsm8k": _eval("math/gsm8k", "gsm8k", "sha256:2cc616a1e0b23ea1df29370476365cde71c4e0aa823fb06cc194c5a8a9381abe"),
    "svamp": _eval("math/svamp", "SVAMP", "sha256:ffed015784f738f317c5603177861d044c4fc94e09211d78b25e96d46c656e2c"),
    "multiarith": _eval("math/multiarith", "MultiArith",
                        "sha256:a40f426807c8a563802c2a5b66bda3bcd1eba9c099038fd1199f0dd57de5fd28"),
    "addsub": _eval("math/addsub", "AddSub", "sha256:62a8662b1ad40879953c4df0e61883a749d03aa3fc5e71f1cdb842b816e139ff"),
    "singleeq": _eval("math/singleeq", "SingleEq",
                      "sha256:712b15edb851c97aab42a5de106d94008f94d917366c92537ed5400a8aacb207"),
    "mawps": _eval("math/mawps", "mawps", "sha256:c1a708979cbf2b3df9ac4020baacf3e8e73fcf089e1de7dd1b305b810bfaa15f"),
    "aqua": _eval("math/aqua", "AQuA", "sha256:de677f5f0139340009eb01f17c0db781b4161912cd1f4efa77292f2fcf3478ee"),
    "mathqa": _eval("math/mathqa", "mathqa", "sha256:58715cb7aaccc7f3f2994586073800a57a3e44f77d22e62bee7fd7ff8315172c"),
    "boolq": _eval("commonsense/boolq", "boolq",
                   "sha256:89df2397cbca81dc31adcc6f7f5b635821aa0565aafde46725b2b4bd39b4dfa9",
                   "sha256:5ccbaceebaddc69765e1c4a363632196b81851d303696672165ab59ec4e48c83"),
    "piqa": _eval("commonsense/piqa", "piqa",
                  "sha256:3860d11b9b42e590b6b4bbc1643214d373ed0b0d4ac62fcc7bdceb8e044ad141",
                  "git-sha1:44326ba946f8bd645bfa7a189e619d29b5bc17e5"),
    "siqa": _eval("commonsense/social_i_qa", "social_i_qa",
                  "sha256:71543f41127451945379d106ffedaef502f1c8770dff6d2f543aca85e3080b1d",
                  "git-sha1:bd524129d80efdfabc8476bbedc4f41b400cfda0"),
    "hellaswag": _eval("commonsense/hellaswag", "hellaswag", "git-sha1:183c4920415f83ba4b793c4873a33e7e10bd1be5",
                       "git-sha1:ca68dc85fc2a2f73c9b1b8b0823cc41a8f669718"),
    "winogrande": _eval("commonsense/winogrande", "winogrande",
                        "sha256:6946f5209e7114c65c6d04f8f644c5a061af20d730b1cfe158fff3dc44076fb9",
                        "git-sha1:0b56375ac6b4464fa97abfb72812f15c772ba305"),
    "arc-e": _eval("commonsense/arc-easy", "ARC-Easy",
                   "sha256:3f32a84716ca6d57d38728bf80cc8117aecd17445c2cf29a68b571b810eb82dc",
                   "sha256:6a06cece3dec32f4fb1c1b0fc29dab14be7cf3053b417290dbc6cd845359f5ff"),
    "arc-c": _eval("commonsense/arc-challenge", "ARC-Challenge",
                   "sha256:4a89ce368ae01a71d268d9851686738b2a0a1d84271116bab49a1dd2b48ecad7",
                   "sha256:a9debff28aafed86a08211dc3584a3b6cb38edca8c56bb34cd5002ed54aeebfb"),
    "obqa": _eval("commonsense/openbookqa", "openbookqa",
                  "sha256:8479930f7b8a26052c78250280b5465a4016ca7fc806af440d0f37e243f3099e",
                  "sha256:a1e094eeea01f70c0baa880f37497b26700ae99b243927b9c529984de9b1fe90"),
    # Training sets. math_data.json (3260 problems with rationales) is saved as train_math_3k.json.
    "math_data": _training("math/train_math_3k.json", "math_data",
                           "sha256:1d06633b4db748b7cfa38f2891f8d7b17b3636717b3188dd382045b94cf999a7"),
    "math_7k": _training("math/math_7k.json", "math_7k", "git-sha1:fd93bf268b53bb644b38e71270cdf633951ba3e0"),
    "math_10k": _training("math/math_10k.json", "math_10k", "git-sha1:27dba77d6ed80aa118d78fbafa5cecd651f6d463"),
    "math_14k": _training("math/math_14k.json", "math_14k", "git-sha1:7dc3a2312d83bd5cd6388ecd5d530f2ff6ed1ad6"),
    "math_50k": _training("math/math_50k.json", "math_50k", "git-sha1:61fcf3e08fc90a922be320441019d6022e25f5d0"),
    "commonsense_15k": _training("commonsense/commonsense_15k.json", "commonsense_15k",
                                 "git-sha1:3716afef6d384c475dba13f88a5a96c8032dafe2"),
    "commonsense_170k": _training("commonsense/commonsense_170k.json", "commonsense_170k",
                                  "git-sha1:529e426b33d4cdb1d0c4a275a1a7245ad081fd91"),
}
