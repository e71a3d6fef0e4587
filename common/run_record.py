"""The record of a training run (``run_config.yaml``) as typed settings, for the stages that read it.

``steam-train train`` writes every resolved setting of the run to ``OUTPUT_DIR/run_config.yaml``
(a valid config file for ``train``). ``chat``, ``eval`` and ``export`` take an adapter dir that is
either that run dir or one of its ``checkpoint-N`` folders, so :meth:`RunRecord.load` looks in the
folder first, then in its parent; ``serve`` needs only an export dir, whose ``export_report.json``
carries what it uses of the run (the persona).

Only the keys the later stages use are typed here (pydantic validates them once, on load); every
key stays readable in :attr:`RunRecord.raw`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from steam_persona.common.arguments import quantization_bits
from steam_persona.common.errors import UserError

RUN_CONFIG = "run_config.yaml"


class RunRecord(BaseModel):
    """The settings a run trained with; every field is ``None`` (or empty) when the run has no record.

    Attributes:
        path: the ``run_config.yaml`` read, or ``None``.
        model_name_or_path: the base model (hub id, folder, ``.gguf`` or ``smollm2``).
        template: the prompt format (``auto`` or a named template).
        system: the persona system prompt trained with; ``""`` = the run used none, ``None`` = not recorded.
        cutoff_len: max tokens per sample.
        quantization_bit: 4 or 8 for QLoRA / LLM.int8 runs, ``None`` for a 16-bit base.
        trust_remote_code: whether the base needed its own model code.
        dataset: the training dataset(s) (names or paths), as given to ``--dataset``.
        dataset_dir: the folder of ``dataset_info.json`` the names refer to.
        raw: the whole parsed file.
    """

    model_config = ConfigDict(frozen=True, extra="ignore", protected_namespaces=())

    path: Path | None = None
    model_name_or_path: str | None = None
    template: str | None = None
    system: str | None = None
    cutoff_len: int | None = None
    quantization_bit: int | None = None
    trust_remote_code: bool = False
    dataset: list[str] = Field(default_factory=list)
    dataset_dir: str | None = None
    raw: dict[str, Any] = Field(default_factory=dict)

    @field_validator("dataset", mode="before")
    @classmethod
    def _dataset_list(cls, v: Any) -> Any:
        """``--dataset a,b`` is recorded as a list; a hand-written file may hold one string."""
        if v is None:
            return []
        return [s.strip() for s in v.split(",") if s.strip()] if isinstance(v, str) else v

    @field_validator("quantization_bit")
    @classmethod
    def _bits(cls, v: int | None) -> int | None:
        """The one rule of ``--quantization_bit``: 4 or 8, and 0 = ``None`` (a 16-bit base)."""
        return quantization_bits(v)

    @staticmethod
    def find(adapter_dir: str | Path) -> Path | None:
        """``adapter_dir/run_config.yaml``, else the parent's (a checkpoint's run dir), else ``None``."""
        d = Path(adapter_dir).expanduser()
        return next((c for c in (d / RUN_CONFIG, d.parent / RUN_CONFIG) if c.is_file()), None)

    @classmethod
    def load(cls, adapter_dir: str | Path | None) -> RunRecord:
        """The record of the run that made ``adapter_dir`` (see :meth:`find`); an empty record when
        ``adapter_dir`` is ``None`` or has no ``run_config.yaml``.

        Raises:
            UserError: the file is not valid YAML, not a mapping, or a typed key has a wrong value
                (the message names the file and the key).
        """
        path = cls.find(adapter_dir) if adapter_dir else None
        if path is None:
            return cls()
        import yaml

        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise UserError(f"{path}: invalid YAML ({getattr(e, 'problem', e)}); restore the file from the run") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise UserError(f"{path}: expected a mapping of settings, got {type(data).__name__}; restore the file from the run")
        fields = {k: v for k, v in data.items() if k in cls.model_fields and k not in ("path", "raw")}
        try:
            return cls(path=path, raw=data, **fields)
        except ValidationError as e:
            err = e.errors()[0]
            key = ".".join(str(x) for x in err["loc"])
            raise UserError(f"{path}: '{key}': {err['msg']} (got {err.get('input')!r}); fix it or restore the file "
                            "from the run") from None
