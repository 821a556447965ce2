"""The dataset registry and a safe fetcher (introduced in Chapter 02).

Every dataset the book uses is registered once here: its files, canonical URL, sha256, licence and
citation. :func:`dataset_path` resolves a file in this order:

1. the directory named by ``$SCRATCHLM_DATA`` (``$SCRATCHLM_DATA/<dataset>/<file>``),
2. the user cache (``$SCRATCHLM_CACHE`` or ``~/.cache/scratchlm``),
3. a download into the cache: progress bar, sha256 check, temp file then atomic rename.

With ``$SCRATCHLM_OFFLINE=1`` (or ``download=False``) step 3 is replaced by an error that names the
file and the directory to put it in. A partial or corrupt download never reaches its final name.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ..runtime.env import env_flag

DATA_ENV = "SCRATCHLM_DATA"
CACHE_ENV = "SCRATCHLM_CACHE"
OFFLINE_ENV = "SCRATCHLM_OFFLINE"


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset and where its canonical copy lives."""

    name: str  # file name inside the dataset directory
    url: str  # canonical download URL (a plain file, or a zip archive holding the file)
    sha256: str  # hex digest of the file itself (not of the archive)
    size: int  # bytes, for the progress bar and a quick sanity check
    member: str | None = None  # path inside the zip archive at ``url``; None for a plain file


@dataclass(frozen=True)
class DatasetInfo:
    """A registered dataset: files plus the facts a reader must know to use it fairly."""

    name: str
    files: tuple[RemoteFile, ...]
    licence: str
    citation: str
    description: str = ""
    extra: dict = field(default_factory=dict)

    def file(self, name: str) -> RemoteFile:
        for f in self.files:
            if f.name == name:
                return f
        raise ValueError(
            f"dataset {self.name!r} has no file {name!r}; "
            f"expected one of {[f.name for f in self.files]}"
        )


_UD = "https://raw.githubusercontent.com/UniversalDependencies/UD_English-EWT/15d613d8447b3478787d4c278730a1e48a945efb"
_STSB = "https://dl.fbaipublicfiles.com/glue/data/STS-B.zip"

REGISTRY: dict[str, DatasetInfo] = {
    d.name: d
    for d in [
        DatasetInfo(
            name="tinyshakespeare",
            description="40,000 lines of Shakespeare (1,115,394 characters), Karpathy's char-rnn corpus.",
            files=(
                RemoteFile(
                    "input.txt",
                    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
                    "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
                    1115394,
                ),
            ),
            licence="Public domain (works of William Shakespeare).",
            citation="Karpathy, A. (2015). char-rnn. https://github.com/karpathy/char-rnn",
        ),
        DatasetInfo(
            name="sms_spam",
            description="UCI SMS Spam Collection v.1: 5,574 SMS messages labelled ham/spam (747 spam).",
            files=(
                RemoteFile(
                    "SMSSpamCollection",
                    "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
                    "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d",
                    477907,
                    member="SMSSpamCollection",
                ),
            ),
            licence="Free for research use; see the collection's readme (UCI Machine Learning Repository).",
            citation=(
                "Almeida, T. A., Gómez Hidalgo, J. M., Yamakami, A. (2011). Contributions to the Study "
                "of SMS Spam Filtering: New Collection and Results. DocEng '11."
            ),
        ),
        DatasetInfo(
            name="ud_english_ewt",
            description="Universal Dependencies English Web Treebank (dev and test splits, CoNLL-U).",
            files=(
                RemoteFile(
                    "en_ewt-ud-dev.conllu",
                    f"{_UD}/en_ewt-ud-dev.conllu",
                    "531a54ff90d6ab12201c5a50c3e78e6ddac4de69abc4bce5d275d3cd29efe2b6",
                    1805545,
                ),
                RemoteFile(
                    "en_ewt-ud-test.conllu",
                    f"{_UD}/en_ewt-ud-test.conllu",
                    "e266e515a0a7547657ed3d90d9ba46487d6bd251f27ad4269d4e8a427c8555cd",
                    1804515,
                ),
            ),
            licence="CC BY-SA 4.0",
            citation=(
                "Silveira, N. et al. (2014). A Gold Standard Dependency Corpus for English. LREC 2014. "
                "Universal Dependencies English EWT."
            ),
        ),
        DatasetInfo(
            name="stsb",
            description="STS Benchmark: sentence pairs with similarity scores 0-5 (GLUE STS-B, original files).",
            files=tuple(
                RemoteFile(f"sts-{split}.tsv", _STSB, digest, size, member=f"STS-B/original/sts-{split}.tsv")
                for split, digest, size in [
                    ("train", "0f71910b59aa1ad973c5897f0791f3b0965a92b8f82b1a95f3eea9f4162fda82", 901177),
                    ("dev", "5d7e944d8b02734b07bfdb5df67db3420c64bed153fcaa1ba47ad03480cf4234", 255680),
                    ("test", "affe45928a66ee5a708531233c95b7dacbbdc57f974f002a3d32ea0180cf816a", 282419),
                ]
            ),
            licence="Scores CC BY-SA 4.0; texts under their sources' terms (see the STS-B readme).",
            citation=(
                "Cer, D. et al. (2017). SemEval-2017 Task 1: Semantic Textual Similarity Multilingual "
                "and Crosslingual Focused Evaluation. SemEval-2017."
            ),
        ),
    ]
}


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry for ``name``."""
    if name not in REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; registered: {sorted(REGISTRY)}")
    return REGISTRY[name]


def cache_dir() -> Path:
    """Where downloads go: ``$SCRATCHLM_CACHE`` or ``~/.cache/scratchlm``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "scratchlm")


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _verify(path: Path, spec: RemoteFile) -> None:
    digest = sha256_of(path)
    if digest != spec.sha256:
        raise ValueError(
            f"checksum mismatch for {spec.name} at {path}: expected sha256 {spec.sha256}, "
            f"got {digest} ({path.stat().st_size} bytes, expected {spec.size}). "
            "Delete the file and fetch it again."
        )


def _fetch_bytes(url: str, expected_size: int | None, desc: str, timeout: float) -> bytes:
    from tqdm.auto import tqdm

    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (http(s) only)
        total = int(response.headers.get("Content-Length") or 0) or expected_size
        buf = io.BytesIO()
        with tqdm(total=total, unit="B", unit_scale=True, desc=desc, leave=False) as bar:
            for block in iter(lambda: response.read(1 << 16), b""):
                buf.write(block)
                bar.update(len(block))
    return buf.getvalue()


def download(spec: RemoteFile, dest: Path, *, timeout: float = 60.0) -> Path:
    """Download ``spec`` to ``dest`` atomically: temp file in the same directory, verify, rename.

    If anything fails (network, truncated body, bad archive, checksum) the temp file is removed and
    ``dest`` is left exactly as it was.
    """
    if not spec.url.startswith(("http://", "https://")):
        raise ValueError(f"only http(s) URLs can be downloaded; got {spec.url!r}")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            payload = _fetch_bytes(spec.url, None if spec.member else spec.size, spec.name, timeout)
            if spec.member is not None:
                try:
                    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
                        payload = archive.read(spec.member)
                except (zipfile.BadZipFile, KeyError) as err:
                    raise ValueError(
                        f"{spec.url} should be a zip archive holding {spec.member!r}: {err}"
                    ) from err
            out.write(payload)
        _verify(tmp, spec)
        os.replace(tmp, dest)  # atomic on the same file system
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def dataset_path(name: str, file: str | None = None, *, download_missing: bool | None = None) -> Path:
    """Local path of one file of a registered dataset, downloading it if needed and allowed.

    ``file`` may be omitted for single-file datasets. ``download_missing`` defaults to true unless
    ``$SCRATCHLM_OFFLINE`` is set to 1.
    """
    info = dataset_info(name)
    if file is None:
        if len(info.files) != 1:
            raise ValueError(
                f"dataset {name!r} has several files; pass one of {[f.name for f in info.files]}"
            )
        file = info.files[0].name
    spec = info.file(file)

    override = os.environ.get(DATA_ENV)
    if override:
        candidate = Path(override).expanduser() / name / file
        if candidate.is_file():
            _verify(candidate, spec)
            return candidate

    cached = cache_dir() / name / file
    if cached.is_file():
        _verify(cached, spec)
        return cached

    if download_missing is None:
        download_missing = not env_flag(OFFLINE_ENV)  # 1/true/yes/on; a typo raises, never passes as "off"
    if not download_missing:
        where = f"{Path(override).expanduser() / name} (from ${DATA_ENV}) or " if override else ""
        raise FileNotFoundError(
            f"{file} of dataset {name!r} was not found and downloading is off. "
            f"Put the file in {where}{cached.parent}, or set ${DATA_ENV} to a directory holding "
            f"{name}/{file}. Canonical source: {spec.url}"
        )
    return download(spec, cached)


def read_text(name: str, file: str | None = None) -> str:
    """The text of a dataset file (UTF-8)."""
    return dataset_path(name, file).read_text(encoding="utf-8")
