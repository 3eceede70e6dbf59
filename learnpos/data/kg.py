"""Knowledge-graph triples: read a dataset, index its entities and relations, know every true
triple (for filtered ranking).

A dataset is a folder (or a `.tar.gz` of one, read without unpacking, or a folder holding one
such archive, as FB15k-237 ships) with `train.txt`, `valid.txt` and `test.txt`, one
`head<TAB>relation<TAB>tail` triple per line (a trailing `\\r` is stripped: some releases ship
CRLF). Named datasets `nations`, `kinships` (alias `kinship`) and `umls` load from the PyKEEN
package when it is installed (it ships them);
`wn18rr`, `fb15k-237` and any other come from a path.

Entities and relations are indexed from the training split. A validation or test triple
whose entity or relation never appears in training cannot be scored by any embedding model:
it is counted, reported (`KGData.unseen`) and left out of ranking, the standard policy (as
in PyKEEN and in the ConvE/CoKE evaluations). Malformed lines are a `DataError` naming the
file and the line.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from learnpos.data.sources import FileLog
from learnpos.data.text import decode_utf8, not_regular
from learnpos.errors import DataError

SPLITS = ("train", "valid", "test")
PYKEEN_DATASETS = {"nations": "nations", "kinships": "kinships", "kinship": "kinships", "umls": "umls"}


def _parse(text: str, source: str) -> list[tuple[str, str, str]]:
    triples = []
    for i, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise DataError(f"{source} line {i}: expected 3 tab-separated fields (head, relation, tail), "
                            f"got {len(parts)}: {line[:80]!r}")
        if any(not p.strip() for p in parts):
            raise DataError(f"{source} line {i}: empty field in {line[:80]!r}")
        triples.append((parts[0].strip(), parts[1].strip(), parts[2].strip()))
    return triples


ARCHIVES = (".tar.gz", ".tgz", ".tar")
TSV = "tab-separated UTF-8 text"  # what a split file must be


def read_splits(path: str | Path, files: FileLog | None = None) -> dict[str, list[tuple[str, str, str]]]:
    """The three splits of a dataset folder or `.tar.gz` (members may sit in a subfolder).
    `files` records each file read (an archive as one file)."""
    path = Path(path)
    files = files if files is not None else FileLog(path)
    texts: dict[str, str] = {}
    if path.is_dir() and not (path / "train.txt").exists():
        archives = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(ARCHIVES))
        if len(archives) == 1:  # a folder as some releases ship it: one archive and a README
            return read_splits(archives[0], files)
        if archives:
            raise DataError(f"{path} has no train.txt but {len(archives)} archives "
                            f"({', '.join(a.name for a in archives)}): give --kg.data the one to read")
    if path.is_dir():
        for split in SPLITS:
            f = path / f"{split}.txt"
            if not f.exists():
                raise DataError(f"{path} has no {split}.txt; a KG dataset is a folder with train.txt, valid.txt "
                                f"and test.txt (tab-separated head, relation, tail)")
            if not f.is_file():
                raise not_regular(f, TSV)
            texts[split] = decode_utf8(files.add(f, f.read_bytes()), str(f), TSV)
    elif path.is_file() and path.name.endswith(ARCHIVES):
        raw = files.add(path, path.read_bytes())
        try:
            with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
                members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
                for split in SPLITS:
                    if f"{split}.txt" not in members:
                        raise DataError(f"{path} has no {split}.txt member")
                    raw = tar.extractfile(members[f"{split}.txt"]).read()
                    texts[split] = decode_utf8(raw, f"{path}!{split}.txt", TSV)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise DataError(f"{path} is not a readable tar archive ({e})") from None
    elif path.exists() and not path.is_file():
        raise not_regular(path, "a dataset folder or .tar.gz")
    else:
        raise DataError(f"{path} does not exist or is not a dataset folder or .tar.gz; pass --data PATH to a folder "
                        f"with train.txt, valid.txt and test.txt (or a .tar.gz of them)")
    return {split: _parse(texts[split], f"{path}/{split}.txt") for split in SPLITS}


def dataset_path(name: str, data: str = "") -> Path:
    """Where dataset `name` is read from: `data` if given, else PyKEEN's copy for the small
    named datasets, else a DataError saying what to pass."""
    if data:
        return Path(data)
    key = PYKEEN_DATASETS.get(name.lower())
    if key is not None and find_spec("pykeen") is not None:
        folder = Path(find_spec("pykeen").origin).parent / "datasets" / key
        if (folder / "train.txt").exists():
            return folder
    known = ", ".join(sorted(set(PYKEEN_DATASETS) - {"kinship"}))
    hint = (f"install PyKEEN (pip install 'learnpos[kg]'), which ships {known}, or give --kg.data PATH"
            if key is not None else "give --kg.data PATH to a folder or .tar.gz with train.txt, valid.txt, test.txt")
    raise DataError(f"no data for KG dataset '{name}': {hint}")


@dataclass
class KGData:
    """Indexed triples: int64 arrays (N, 3) of (head, relation, tail) ids per split."""

    entities: list[str]
    relations: list[str]
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    unseen: dict[str, int] = field(default_factory=dict)  # split -> triples left out (unknown entity/relation)
    source: dict = field(default_factory=dict)  # what was read (`learnpos.data.sources.FileLog.record`)

    @property
    def n_entities(self) -> int:
        return len(self.entities)

    @property
    def n_relations(self) -> int:
        return len(self.relations)

    def split(self, name: str) -> np.ndarray:
        if name not in SPLITS:
            raise DataError(f"split '{name}' is not one of: {', '.join(SPLITS)}")
        return getattr(self, name)

    def known_triples(self) -> np.ndarray:
        """Every true triple (train + valid + test), for filtered ranking."""
        return np.concatenate([self.train, self.valid, self.test])


def index_triples(splits: dict[str, list[tuple[str, str, str]]]) -> KGData:
    train = splits["train"]
    if not train:
        raise DataError("the training split has no triples")
    entities = sorted({h for h, _, _ in train} | {t for _, _, t in train})
    relations = sorted({r for _, r, _ in train})
    e_id, r_id = {e: i for i, e in enumerate(entities)}, {r: i for i, r in enumerate(relations)}
    arrays, unseen = {}, {}
    for split, triples in splits.items():
        rows = [(e_id[h], r_id[r], e_id[t]) for h, r, t in triples if h in e_id and r in r_id and t in e_id]
        unseen[split] = len(triples) - len(rows)
        arrays[split] = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
    return KGData(entities, relations, arrays["train"], arrays["valid"], arrays["test"],
                  {k: v for k, v in unseen.items() if k != "train"})


def load_kg(name: str, data: str = "") -> KGData:
    path = dataset_path(name, data)
    files = FileLog(path)
    kg = index_triples(read_splits(path, files))
    kg.source = files.record()
    return kg
