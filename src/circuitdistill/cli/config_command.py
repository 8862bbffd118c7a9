"""One engine for every command whose options are a pydantic config.

``config_command(cls, body)`` turns the fields of ``cls`` into options (a nested config's fields too, as
``--parent-field``), each defaulting to "not given". ``--config FILE.json`` loads fields from a file, options given
on the command line override it, and ``--print-config`` prints the resolved config as JSON instead of running.
A field's description is its help, followed by its default and choices. List fields take comma-separated values
(and may be repeated). A bad value prints ``error: --option: message`` and exits 2; so does a key of the file that
is not a field.
"""
from __future__ import annotations

import inspect
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping, Optional, get_args, get_origin

import typer
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from ..utils import UserError, read_json_file

_SEQUENCES = (list, tuple, set, frozenset)
_KW = inspect.Parameter.KEYWORD_ONLY

CONFIG_OPTION = typer.Option(None, "--config", help="JSON file with the command's config fields (or the "
                             "run_config.json / config.json of an earlier run); options given on the command line "
                             "override it")
PRINT_CONFIG_OPTION = typer.Option(False, "--print-config", help="print the resolved config (file plus options) as "
                                   "JSON and exit without running")


def switch(name: str, help_text: str, default: bool = False) -> inspect.Parameter:
    """A command parameter that is no config field: an on/off flag."""
    opt = "--" + name.replace("_", "-")
    decls = [f"{opt}/--no-{opt[2:]}"] if default else [opt]
    return inspect.Parameter(name, _KW, default=typer.Option(default, *decls, help=help_text), annotation=bool)


OVERWRITE = switch("overwrite", "replace the results of an earlier run in the output directory (or write into a "
                   "directory holding other files)")


def _without_none(ann: Any) -> Any:
    if get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in get_args(ann) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return ann


def _is_sequence(ann: Any) -> bool:
    return get_origin(_without_none(ann)) in _SEQUENCES


def _is_config(ann: Any) -> bool:
    return isinstance(ann, type) and issubclass(ann, BaseModel)


def _choices(ann: Any) -> tuple:
    ann = _without_none(ann)
    if _is_sequence(ann):
        ann = _without_none(get_args(ann)[0])
    return get_args(ann) if get_origin(ann) is Literal else ()


def _option_type(ann: Any) -> Any:
    if _is_sequence(ann):
        return list[str]
    ann = _without_none(ann)
    return ann if ann in (int, float, str, bool) else str


def _help(field: FieldInfo) -> str:
    default = "required" if field.is_required() else json.dumps(
        to_jsonable_python(field.get_default(call_default_factory=True)))
    choices = _choices(field.annotation)
    return (f"{field.description or ''} [default: {default}]"
            + (f" [choices: {', '.join(map(str, choices))}]" if choices else ""))


def comma_separated(values: Iterable[str] | None) -> list[str] | None:
    """A repeatable option's values, each split at commas (None: not given)."""
    return None if values is None else [part.strip() for v in values for part in v.split(",") if part.strip()]


@dataclass(frozen=True)
class _Field:
    """One (possibly nested) config field as a command-line parameter."""

    path: tuple[str, ...]
    info: FieldInfo
    decls: tuple[str, ...]
    positional: bool

    @property
    def param(self) -> str:
        return "__".join(self.path)

    @property
    def label(self) -> str:
        return self.path[-1].upper() if self.positional else self.decls[0].split("/")[0]

    def parameter(self) -> inspect.Parameter:
        default = (typer.Argument(None, help=_help(self.info), show_default=False) if self.positional else
                   typer.Option(None, *self.decls, help=_help(self.info), show_default=False))
        return inspect.Parameter(self.param, _KW, default=default,
                                 annotation=Optional[_option_type(self.info.annotation)])

    def value(self, given: Any) -> Any:
        if _is_sequence(self.info.annotation):
            return comma_separated(given)
        return given


def _default_decls(path: tuple[str, ...], info: FieldInfo) -> tuple[str, ...]:
    opt = "--" + "-".join(path).replace("_", "-")
    return (f"{opt}/--no-{opt[2:]}",) if _without_none(info.annotation) is bool else (opt,)


def _fields(cls: type[BaseModel], skip: set[str], names: Mapping[str, Iterable[str]], positional: set[str],
            prefix: tuple[str, ...] = ()) -> Iterator[_Field]:
    for name, info in cls.model_fields.items():
        path = (*prefix, name)
        key = ".".join(path)
        if key in skip:
            continue
        if _is_config(info.annotation):
            yield from _fields(info.annotation, skip, names, positional, path)
        else:
            yield _Field(path, info, tuple(names.get(key) or _default_decls(path, info)), key in positional)


def read_config_file(cls: type[BaseModel], path: str | Path) -> dict:
    """The fields in a JSON file; a circuitdistill artifact (with "format") gives the config it recorded."""
    data = read_json_file(path, "config file")
    if not isinstance(data, dict):
        raise UserError(f"{path}: must hold a JSON object of {cls.__name__} fields")
    if "format" in data and isinstance(data.get("config"), dict):
        return data["config"]
    return data


def _describe(err: dict, labels: Mapping[tuple[str, ...], str], source: str | Path | None) -> str:
    loc = tuple(str(x) for x in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"{source or 'config'}: unknown key {'.'.join(loc)!r}"
    msg = err["msg"].removeprefix("Value error, ")
    for n in range(len(loc), 0, -1):
        if loc[:n] in labels:
            return f"{labels[loc[:n]]}: {msg}"
    return f"{'.'.join(loc)}: {msg}" if loc else msg


def validated(cls: type[BaseModel], data: dict, labels: Mapping[tuple[str, ...], str],
              source: str | Path | None = None) -> Any:
    """``cls(**data)``; each error printed as ``error: --option: message`` (labels: field path -> option), exit 2."""
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        for err in e.errors():
            typer.echo(f"error: {_describe(err, labels, source)}", err=True)
        raise typer.Exit(2) from None


def echo_config(cfg: BaseModel) -> None:
    typer.echo(cfg.model_dump_json(indent=2))


def _put(data: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        if not isinstance(data.get(key), dict):
            data[key] = {}
        data = data[key]
    data[path[-1]] = value


def config_command(cls: type[BaseModel], body: Callable, *, extra: Iterable[inspect.Parameter] = (),
                   skip: Iterable[str] = (), names: Mapping[str, Iterable[str]] | None = None,
                   positional: Iterable[str] = ()) -> Callable:
    """A typer command running ``body(cfg, **extra)`` on the config resolved from --config and the options.

    skip: fields (dotted paths for nested ones) settable only through --config. names: option declarations that
    replace a field's default ``--field-name``. positional: fields taken as arguments instead of options.
    """
    fields = list(_fields(cls, set(skip), names or {}, set(positional)))
    decls = [d for f in fields for decl in f.decls for d in decl.split("/")]
    shared = sorted({d for d in decls if decls.count(d) > 1})
    if shared:
        raise ValueError(f"{cls.__name__}: more than one field has the option {', '.join(shared)}")
    labels = {f.path: f.label for f in fields}

    def command(config: Optional[str] = None, print_config: bool = False, **kwargs):
        given = {f: kwargs.pop(f.param) for f in fields}
        data = read_config_file(cls, config) if config else {}
        for f, value in given.items():
            if value is not None:
                _put(data, f.path, f.value(value))
        cfg = validated(cls, data, labels, config)
        if print_config:
            echo_config(cfg)
            return None
        return body(cfg, **kwargs)

    params = [inspect.Parameter("config", _KW, default=CONFIG_OPTION, annotation=Optional[str]),
              inspect.Parameter("print_config", _KW, default=PRINT_CONFIG_OPTION, annotation=bool),
              *extra, *(f.parameter() for f in fields)]
    command.__signature__ = inspect.Signature(params)
    command.__doc__ = body.__doc__
    return command
