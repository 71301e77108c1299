"""Teachers for :class:`~lightning_losses.callbacks.distillation.Distillation`: from a timm name,
a checkpoint or state-dict file, or a module; loaded safely and frozen.

A teacher *source* is parsed (and its file read) when the callback is built, so that an unknown
timm name or an unsafe file fails at once; the module is built with :meth:`TeacherSource.build`,
which needs the class count only for a timm architecture.

Files are read with ``torch.load(..., weights_only=True)`` (or ``safetensors``): a file that needs
arbitrary unpickling (a pickled module, custom classes in the hyper-parameters) is refused, because
unpickling it can run any code. The message says how to re-save it as a plain state dict.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import closest

#: File suffixes read as weights files (anything else that exists on disk is tried too).
WEIGHT_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".safetensors")


def safe_load(path: str | os.PathLike) -> Any:
    """The object stored at ``path``, read without arbitrary unpickling.

    ``.safetensors`` files are read with :func:`safetensors.torch.load_file`; any other file with
    ``torch.load(path, map_location="cpu", weights_only=True)``, which only rebuilds tensors and
    plain containers. A file that needs more raises a ``ValueError`` that says why and how to
    re-save it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher weights file {str(path)!r} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"refusing to load the teacher file {str(path)!r}: it needs arbitrary unpickling "
            "(it stores Python objects other than tensors and plain containers, e.g. a whole "
            "pickled nn.Module or custom classes), and unpickling such a file can run any code. "
            "Only if you trust the file, re-save its weights as a plain state dict, e.g. "
            "`obj = torch.load(path, weights_only=False); torch.save(obj['state_dict'] if "
            "'state_dict' in obj else obj.state_dict(), 'teacher_state_dict.pt')`, and pass that "
            f"file. (torch said: {str(err).splitlines()[0]})"
        ) from err


def extract_state_dict(obj: Any, where: str) -> dict[str, Tensor]:
    """The tensors of a loaded file: a Lightning checkpoint's ``state_dict`` or a plain one."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    ):
        keys = sorted(map(str, obj.keys()))[:10] if isinstance(obj, Mapping) else []
        raise ValueError(
            f"{where} must hold a state dict (a mapping of names to tensors) or a Lightning "
            f"checkpoint with a 'state_dict' entry; got a {type(obj).__name__}"
            + (f" with keys {keys}." if keys else ".")
        )
    return dict(obj)


def match_state_dict(
    state_dict: Mapping[str, Tensor], module: nn.Module, prefix: str | None, where: str
) -> dict[str, Tensor]:
    """``state_dict`` with a prefix stripped so that its keys are exactly ``module``'s.

    ``prefix`` given: keep the keys that start with it and strip it. ``None``: find the prefix
    (``""``, ``"model."``, ``"net."``, ``"model.backbone."``, ...) under which the keys are
    exactly the module's, as in a ``LightningModule`` that keeps the network in an attribute.
    """
    wanted = set(module.state_dict())

    def strip(p: str) -> dict[str, Tensor]:
        return {k[len(p) :]: v for k, v in state_dict.items() if k.startswith(p)}

    if prefix is not None:
        stripped = strip(prefix)
        if set(stripped) == wanted:
            return stripped
        candidates = [prefix]
    else:
        probe = min(wanted, key=len) if wanted else ""
        candidates = sorted(
            {k[: len(k) - len(probe)] for k in state_dict if k.endswith(probe)}, key=len
        )
        for p in candidates:
            if p and not p.endswith("."):
                continue
            stripped = strip(p)
            if set(stripped) == wanted:
                return stripped
        candidates = candidates or [""]
    best = max(candidates, key=lambda p: len(set(strip(p)) & wanted))
    got = set(strip(best))
    missing, unexpected = sorted(wanted - got), sorted(got - wanted)
    raise ValueError(
        f"the weights in {where} do not fit the teacher architecture "
        f"{type(module).__name__}: with the prefix {best!r} stripped, {len(missing)} key(s) are "
        f"missing (e.g. {missing[:5]}) and {len(unexpected)} unexpected (e.g. {unexpected[:5]}). "
        "Pass `state_dict_prefix=` (the prefix of the teacher's keys in the file, e.g. 'model.') "
        "or the matching `architecture=`."
    )


def check_timm_name(name: str) -> str:
    """``name`` must be a timm architecture; otherwise name the closest ones."""
    import timm

    if not timm.is_model(name):
        hint = closest(name, timm.list_models(), n=5)
        suggestion = f" Close matches: {', '.join(map(repr, hint))}." if hint else ""
        raise ValueError(
            f"`teacher` {name!r} is neither an existing file nor a timm model name "
            f"(timm.list_models()).{suggestion}"
        )
    return name


def _looks_like_path(spec: str) -> bool:
    return spec.endswith(WEIGHT_SUFFIXES) or os.sep in spec or Path(spec).exists()


@dataclass
class TeacherSource:
    """What a teacher is made from: a ready module, or a timm name, plus optional weights."""

    description: str
    module: nn.Module | None = None
    timm_name: str | None = None
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    state_dict: dict[str, Tensor] | None = None
    state_dict_prefix: str | None = None

    @property
    def needs_num_classes(self) -> bool:
        return self.module is None

    def build(self, num_classes: int | None = None) -> nn.Module:
        """The teacher module, with the weights loaded, frozen and in eval mode."""
        if self.module is not None:
            module = self.module
        else:
            import timm

            if num_classes is None:
                raise ValueError(
                    f"the timm teacher {self.timm_name!r} needs a class count: pass "
                    "`num_classes=` to Distillation, or give the module or datamodule a "
                    "`num_classes` attribute (or hyper-parameter)."
                )
            module = timm.create_model(
                self.timm_name, pretrained=False, num_classes=num_classes, **self.timm_kwargs
            )
        if self.state_dict is not None:
            weights = match_state_dict(
                self.state_dict, module, self.state_dict_prefix, self.description
            )
            try:
                module.load_state_dict(weights, strict=True)
            except RuntimeError as err:
                if "size mismatch" not in str(err):
                    raise
                raise ValueError(
                    f"the weights of {self.description} do not fit the architecture built for "
                    f"them (num_classes={num_classes}). {err} If the classifier differs, the "
                    "teacher was trained on another number of classes than the student's; pass "
                    "its own count as `num_classes=` to see the class-count check."
                ) from err
            self.state_dict = None  # the module holds them now
            self.module = module
        return freeze(module)


def parse_teacher(
    spec: str | os.PathLike | nn.Module,
    *,
    architecture: str | nn.Module | None = None,
    weights: str | os.PathLike | None = None,
    state_dict_prefix: str | None = None,
    timm_kwargs: Mapping[str, Any] | None = None,
) -> TeacherSource:
    """Parse one ``teacher`` argument of the callback (see its docstring for the forms)."""
    timm_kwargs = dict(timm_kwargs or {})
    if isinstance(spec, nn.Module):
        if architecture is not None:
            raise ValueError(
                "`architecture` is for a teacher given as a checkpoint path; the teacher is "
                f"already a module ({type(spec).__name__}). Drop `architecture`."
            )
        source = TeacherSource(f"the teacher module {type(spec).__name__}", module=spec)
        if weights is not None:
            source.state_dict = extract_state_dict(safe_load(weights), f"`weights` {weights!s}")
            source.state_dict_prefix = state_dict_prefix
        return source
    if not isinstance(spec, str | os.PathLike):
        raise TypeError(
            "`teacher` must be a timm model name, a path to a checkpoint or state-dict file, an "
            f"nn.Module, or a list of these; got {type(spec).__name__}."
        )
    text = os.fspath(spec)
    if isinstance(spec, os.PathLike) or _looks_like_path(text):
        if not Path(text).is_file():
            raise FileNotFoundError(f"`teacher` file {text!r} does not exist.")
        if weights is not None:
            raise ValueError(
                f"`teacher` is already a weights file ({text!r}); `weights` is for a teacher "
                "given as a timm name or a module. Drop one of them."
            )
        if architecture is None:
            raise ValueError(
                f"`teacher` is a checkpoint path ({text!r}), which holds weights but no "
                "architecture: pass `architecture=` with a timm model name or an nn.Module to "
                "load the weights into."
            )
        state_dict = extract_state_dict(safe_load(text), f"the teacher file {text!r}")
        source = parse_teacher(architecture, timm_kwargs=timm_kwargs)
        source.description = f"the teacher file {text!r}"
        source.state_dict = state_dict
        source.state_dict_prefix = state_dict_prefix
        return source
    if architecture is not None:
        raise ValueError(
            f"`teacher` {text!r} is a timm model name; `architecture` is for a teacher given as "
            "a checkpoint path. Drop `architecture` (use `weights=` for a local weights file)."
        )
    source = TeacherSource(
        f"the timm teacher {text!r}", timm_name=check_timm_name(text), timm_kwargs=timm_kwargs
    )
    if weights is not None:
        source.state_dict = extract_state_dict(safe_load(weights), f"`weights` {weights!s}")
        source.state_dict_prefix = state_dict_prefix
        source.description = f"the weights file {os.fspath(weights)!r}"
    return source


def freeze(module: nn.Module) -> nn.Module:
    """Stop gradients to every parameter and put the module (BatchNorm included) in eval mode."""
    module.requires_grad_(False)
    return module.eval()


def num_classes_of(*owners: Any) -> int | None:
    """The first ``num_classes`` found on the owners (attribute or ``hparams`` entry)."""
    for owner in owners:
        if owner is None:
            continue
        value = getattr(owner, "num_classes", None)
        if value is None:
            value = getattr(getattr(owner, "hparams", None), "get", lambda _k: None)("num_classes")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None
