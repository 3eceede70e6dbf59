"""`learnpos data fetch NAME`: download a named public corpus from its canonical address,
check its sha256, and keep it in a cache folder.

Files are fetched to a temporary name and renamed only after the checksum matches, so a
failed or tampered download never leaves a file that looks complete. A mirror laid out as
`<mirror>/<name>/<file>` (e.g. a local copy served over HTTP) can replace the origin.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from learnpos.errors import DataError
from learnpos.files import temp_path_beside, user_cache_dir


@dataclass(frozen=True)
class RemoteFile:
    name: str
    url: str
    sha256: str


_CHAR_RNN = "https://raw.githubusercontent.com/karpathy/char-rnn/6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e/data"
_PT_EXAMPLES = ("https://raw.githubusercontent.com/pytorch/examples/77f55b912142e11fcfdf5b530231fb9c52f181e8"
                "/word_language_model/data")

CORPORA: dict[str, list[RemoteFile]] = {
    "tinyshakespeare": [
        RemoteFile("input.txt", f"{_CHAR_RNN}/tinyshakespeare/input.txt",
                   "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"),
    ],
    "wikitext-2": [  # tokenized WikiText-2 v1 (Merity et al., 2016) as kept by pytorch/examples
        RemoteFile("train.txt", f"{_PT_EXAMPLES}/wikitext-2/train.txt",
                   "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f"),
        RemoteFile("valid.txt", f"{_PT_EXAMPLES}/wikitext-2/valid.txt",
                   "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8"),
        RemoteFile("test.txt", f"{_PT_EXAMPLES}/wikitext-2/test.txt",
                   "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0"),
    ],
}


def default_cache_dir() -> Path:
    return user_cache_dir() / "data"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(name: str, cache_dir: str | Path | None = None, mirror: str | None = None,
          timeout: float = 60.0, log=print) -> Path:
    """Download corpus `name` (if not already there and intact); return its folder."""
    if name not in CORPORA:
        raise DataError(f"unknown corpus '{name}'; known: {', '.join(CORPORA)}")
    folder = Path(cache_dir or default_cache_dir()) / name
    folder.mkdir(parents=True, exist_ok=True)
    for remote in CORPORA[name]:
        target = folder / remote.name
        if target.exists() and _sha256(target) == remote.sha256:
            log(f"{target}: present, sha256 ok")
            continue
        url = f"{mirror.rstrip('/')}/{name}/{remote.name}" if mirror else remote.url
        tmp = temp_path_beside(target)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
                while block := response.read(1 << 20):
                    out.write(block)
            got = _sha256(tmp)
            if got != remote.sha256:
                raise DataError(f"{url}: sha256 {got} does not match the expected {remote.sha256}; "
                                f"the file was not saved (a changed or truncated download?)")
            os.replace(tmp, target)
            log(f"{target}: downloaded from {url}, sha256 ok")
        except (urllib.error.URLError, OSError) as e:
            raise DataError(f"could not download {url}: {getattr(e, 'reason', e)}; check the network, "
                            f"or pass --mirror URL for a copy laid out as <mirror>/{name}/{remote.name}") from None
        finally:
            tmp.unlink(missing_ok=True)
    return folder
