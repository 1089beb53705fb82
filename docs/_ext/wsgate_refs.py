"""The documentation's generated references: each rendered from the code that defines it, never typed twice.

Each `*_markdown()` function returns MyST Markdown (a table, or headed sections) built from one source:

- `settings_markdown()`: every setting of `wsgate.config.schema.Settings` (`iter_settings`: key, variable,
  type, default, and the `Field(description=...)` doc text);
- `hooks_markdown()`: every hook specification of `wsgate.hookspecs` (its signature and docstring);
- `metrics_markdown()`: every metric `wsgate.metrics.Metrics` registers (name as exposed, type, labels, help);
- `errors_markdown()` / `close_reasons_markdown()`: `wsgate.errors.CLIENT_ERRORS` and `CLOSE_REASONS`, each
  value with the docstring written under its constant (read from the module's source with `ast`: a module
  constant's docstring is not kept at run time);
- `cli_markdown()`: `wsgate --help` as argparse prints it.

`setup(app)` registers one directive per reference (`wsgate-settings`, `wsgate-hooks`, `wsgate-metrics`,
`wsgate-errors`, `wsgate-close-reasons`, `wsgate-close-codes`, `wsgate-cli`); the directive parses the Markdown
into the page.
`tests/test_docs.py` calls the same functions to check that nothing in the code is left undocumented.
"""

from __future__ import annotations

import ast
import inspect
import io
import os
from collections.abc import Callable, Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _cell(text: str) -> str:
    """Text that fits in one cell of a Markdown table (pipes escaped, lines joined)."""
    return " ".join(text.split()).replace("|", "\\|")


def _table(header: tuple[str, ...], rows: Iterator[tuple[str, ...]] | list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# --- settings -------------------------------------------------------------------------------------------


def _type_name(kind: Any, duration: bool) -> str:
    if duration:
        return "duration"
    names = {bool: "bool", int: "int", float: "number", str: "string"}
    if kind in names:
        return names[kind]
    if getattr(kind, "__origin__", None) is tuple:
        return "list of strings"
    return "string"  # a text the schema compiles (the room name pattern)


def _default(key: str, duration: bool) -> str:
    from wsgate.config.schema import Settings, show_duration

    value: Any = Settings()
    for part in key.split("."):
        value = getattr(value, part)
    if duration:
        return f'"{show_duration(value)}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return '""'
    if isinstance(value, tuple):
        return "[" + ", ".join(f'"{v}"' for v in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return f"{value:g}" if isinstance(value, float) else str(value)


def settings_rows() -> list[tuple[str, str, str, str, str]]:
    """(key, variable, type, default, meaning) for every setting, in the schema's order."""
    from wsgate.config.schema import env_name, iter_settings

    return [
        (key, env_name(key), _type_name(kind, info.duration), _default(key, info.duration), info.doc)
        for key, info, kind in iter_settings()
    ]


def settings_markdown() -> str:
    rows = [(f"`{k}`", f"`{v}`", t, d, doc) for k, v, t, d, doc in settings_rows()]
    return _table(("key", "environment variable", "type", "default", "meaning"), rows)


# --- hooks -----------------------------------------------------------------------------------------------


def hook_specs() -> list[tuple[str, str, str]]:
    """(name, call as written in the docs, docstring) for every hook specification, in source order."""
    from wsgate import hookspecs

    specs = []
    for name, function in vars(hookspecs).items():
        if name.startswith("wsgate_") and callable(function):
            params = ", ".join(inspect.signature(function).parameters)
            specs.append((name, f"{name}({params})", inspect.getdoc(function) or ""))
    return specs


def hooks_markdown() -> str:
    parts = []
    for _name, call, doc in hook_specs():
        parts.append(f"**`{call}`**\n\n{doc}\n")
    return "\n".join(parts)


# --- metrics ---------------------------------------------------------------------------------------------


def metrics_rows() -> list[tuple[str, str, str, str]]:
    """(name as exposed, type, labels, help) for every metric a gateway registers."""
    from wsgate.metrics import Metrics

    rows = []
    for family in Metrics().registry.collect():
        name = f"{family.name}_total" if family.type == "counter" else family.name
        labels = sorted(
            {label for sample in family.samples for label in sample.labels if label not in ("le", "quantile")}
        )
        if not labels:  # labelled metrics have no sample before their first use: ask the metric object
            labels = _declared_labels(family.name)
        rows.append((name, family.type, ", ".join(labels), family.documentation))
    return rows


def _declared_labels(name: str) -> list[str]:
    from wsgate.metrics import Metrics

    metrics = Metrics()
    for value in vars(metrics).values():
        if getattr(value, "_name", None) == name:
            return list(getattr(value, "_labelnames", ()))
    return []


def metrics_markdown() -> str:
    rows = [
        (f"`{n}`", t, ", ".join(f"`{lb}`" for lb in labels.split(", ") if lb), h) for n, t, labels, h in metrics_rows()
    ]
    return _table(("metric", "type", "labels", "meaning"), rows)


# --- errors and close reasons ----------------------------------------------------------------------------


def constant_docs(path: Path | None = None) -> dict[str, str]:
    """The docstring written under each module-level constant of `wsgate/errors.py` (by name)."""
    source = (path or ROOT / "wsgate" / "errors.py").read_text()
    body = ast.parse(source).body
    docs = {}
    for node, following in zip(body, body[1:], strict=False):
        target = None
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            target = node.target.id
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            target = node.targets[0].id
        if (
            target
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[target] = inspect.cleandoc(following.value.value)
    return docs


def _names_of(values: tuple[Any, ...]) -> dict[int, str]:
    from wsgate import errors

    return {id(v): name for name, v in vars(errors).items() if any(v is w for w in values) and name.isupper()}


def error_rows() -> list[tuple[str, str, str, str, str]]:
    """(text, label, code, temporary, cause) for every documented error (`wsgate.errors.CLIENT_ERRORS`)."""
    from wsgate.errors import CLIENT_ERRORS

    docs, names = constant_docs(), _names_of(CLIENT_ERRORS)
    return [(k.text, k.label, str(k.code), "yes" if k.temporary else "no", docs[names[id(k)]]) for k in CLIENT_ERRORS]


def close_rows() -> list[tuple[str, str, str, str, str]]:
    """(code, text, label, reconnect, cause) for every close the server sends (`wsgate.errors.CLOSE_REASONS`)."""
    from wsgate.errors import CLOSE_REASONS

    docs, names = constant_docs(), _names_of(CLOSE_REASONS)
    return [(str(r.code), r.text, r.label, r.reconnect.value, docs[names[id(r)]]) for r in CLOSE_REASONS]


def errors_markdown() -> str:
    rows = [(f"`{t}`", f"`{lb}`", c, tmp, cause) for t, lb, c, tmp, cause in error_rows()]
    return _table(("error text", "metric label", "code", "temporary", "when"), rows)


def close_reasons_markdown() -> str:
    rows = [(c, f"`{t}`", f"`{lb}`", rc, cause) for c, t, lb, rc, cause in close_rows()]
    return _table(("close code", "reason", "metric label", "reconnect", "when"), rows)


def close_code_rows() -> list[tuple[str, str, str, str]]:
    """(code, name, reconnect, when) for every close code wsgate sends (`wsgate.errors.CLOSE_CODES`)."""
    from wsgate.errors import CLOSE_CODES

    return [(str(c.code), c.name, c.reconnect.value, c.when) for c in CLOSE_CODES]


def close_codes_markdown() -> str:
    return _table(("close code", "name", "reconnect", "when"), close_code_rows())


# --- the command line ------------------------------------------------------------------------------------


def cli_help() -> str:
    """`wsgate --help`, as argparse prints it on an 80-column terminal."""
    from wsgate import cli

    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "80"
    try:
        out = io.StringIO()
        with redirect_stdout(out):
            cli._parser().print_help()
        return out.getvalue()
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


def cli_markdown() -> str:
    return f"```text\n$ wsgate --help\n{cli_help()}```\n"


GENERATORS: dict[str, Callable[[], str]] = {
    "wsgate-settings": settings_markdown,
    "wsgate-hooks": hooks_markdown,
    "wsgate-metrics": metrics_markdown,
    "wsgate-errors": errors_markdown,
    "wsgate-close-reasons": close_reasons_markdown,
    "wsgate-close-codes": close_codes_markdown,
    "wsgate-cli": cli_markdown,
}


def setup(app: Any) -> dict[str, Any]:
    """The Sphinx extension: one directive per reference, each parsing its generated Markdown into the page."""
    from docutils import nodes
    from docutils.statemachine import StringList
    from sphinx.util.docutils import SphinxDirective

    def directive(generate: Callable[[], str]) -> type[SphinxDirective]:
        class Reference(SphinxDirective):
            has_content = False

            def run(self) -> list[nodes.Node]:
                for module in ("schema.py", "hookspecs.py", "metrics.py", "errors.py", "cli.py"):
                    for path in (ROOT / "wsgate").rglob(module):
                        self.env.note_dependency(str(path))  # the page is rebuilt when its source changes
                container = nodes.container()
                self.state.nested_parse(StringList(generate().splitlines(), source="generated"), 0, container)
                return list(container.children)

        return Reference

    for name, generate in GENERATORS.items():
        app.add_directive(name, directive(generate))
    return {"parallel_read_safe": True, "parallel_write_safe": True}
