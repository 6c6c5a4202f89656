"""Size and duplication measures of the installed package, for the maintainability issue's before/after table.

Counts (from the syntax tree, so comments and docstrings never count as code):
- lines per file under src/scnet;
- the longest functions and those with the most parameters (``self``/``cls`` not counted; ``__init__`` of
  ``nn.Module`` subclasses apart: model constructors), as places to look, not against a threshold: a number about
  code is a hint, never a goal;
- places that load weights into a module: calls of ``<x>.load_state_dict(...)`` whose receiver is not an
  optimiser, scheduler or scaler;
- places that compute the calibration gate: calls of ``sigmoid``/``sigmoid_`` and the Triton kernel's
  ``1 / (1 + exp(-t))``.

    python scripts/code_metrics.py --out docs/results/code-metrics/before.json
    python scripts/code_metrics.py --out docs/results/code-metrics/after.json --before docs/results/code-metrics/before.json
"""
from __future__ import annotations

import argparse
import ast
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1] / "src" / "scnet"
NOT_WEIGHTS = ("optimizer", "scheduler", "scaler")


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = fn.args
    names = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    return len([n for n in names if n not in ("self", "cls", "ctx")])


def _receiver(call: ast.Call) -> str:
    target = call.func.value if isinstance(call.func, ast.Attribute) else None
    return ast.unparse(target) if target is not None else ""


def _is_module_init(fn: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    owner = parents.get(fn)
    return isinstance(owner, ast.ClassDef) and getattr(fn, "name", "") == "__init__"


def measure(root: Path = ROOT) -> dict[str, Any]:
    """Every count above, for each ``.py`` file under ``root``."""
    files, functions, loads, gates = {}, [], [], []
    for path in sorted(root.rglob("*.py")):
        rel = str(path.relative_to(root.parent))
        text = path.read_text()
        files[rel] = len(text.splitlines())
        tree = ast.parse(text)
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append(dict(file=rel, name=node.name, lines=node.end_lineno - node.lineno + 1, params=_params(node),
                                      constructor=_is_module_init(node, parents)))
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                attr, receiver = node.func.attr, _receiver(node)
                if attr == "load_state_dict" and not any(w in receiver for w in NOT_WEIGHTS):
                    loads.append(f"{rel}:{node.lineno} {receiver}.load_state_dict")
                if attr in ("sigmoid", "sigmoid_"):
                    gates.append(f"{rel}:{node.lineno} {ast.unparse(node.func)}")
            elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and "exp(-" in ast.unparse(node.right):
                gates.append(f"{rel}:{node.lineno} 1 / (1 + exp(-t))")
    return dict(files=files, functions=functions, weight_loads=loads, gate_formulas=gates)


def summary(m: dict[str, Any]) -> dict[str, Any]:
    fns = m["functions"]
    longest = sorted(fns, key=lambda f: -f["lines"])[:10]
    most = sorted((f for f in fns if not f["constructor"]), key=lambda f: -f["params"])[:10]
    return dict(
        total_lines=sum(m["files"].values()), largest_files=sorted(m["files"].items(), key=lambda kv: -kv[1])[:8],
        longest_functions=[f"{f['file']}:{f['name']} {f['lines']}" for f in longest],
        most_parameters=[f"{f['file']}:{f['name']} {f['params']}" for f in most],
        weight_loads=m["weight_loads"], gate_formulas=m["gate_formulas"],
    )


def comparison_markdown(before: dict[str, Any], after: dict[str, Any], files: tuple[dict[str, int], dict[str, int]]) -> str:
    """A before/after table of the summary counts and of the largest files."""
    def count(s: dict[str, Any], key: str) -> str:
        return str(len(s[key]))

    first = lambda s, key: s[key][0] if s.get(key) else "-"  # noqa: E731 - a report of an earlier version may lack it
    rows = [("lines in src/scnet", str(before["total_lines"]), str(after["total_lines"])),
            ("longest function", first(before, "longest_functions"), first(after, "longest_functions")),
            ("most parameters (not constructors)", first(before, "most_parameters"), first(after, "most_parameters"))]
    rows += [(label, count(before, key), count(after, key)) for label, key in (
        ("calls loading weights into a module", "weight_loads"), ("places computing the gate", "gate_formulas"))]
    lines = ["| measure | before | after |", "|---|---|---|", *[f"| {a} | {b} | {c} |" for a, b, c in rows], "",
             "| file | lines before | lines after |", "|---|---|---|"]
    names = sorted(set(files[0]) | set(files[1]), key=lambda n: -max(files[0].get(n, 0), files[1].get(n, 0)))
    lines += [f"| {n} | {files[0].get(n, '-')} | {files[1].get(n, '-')} |" for n in names]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="write the summary (and the full measures) as JSON here")
    p.add_argument("--before", type=Path, help="with --out: also write README.md beside it comparing with this earlier JSON")
    args = p.parse_args()
    m = measure()
    s = summary(m)
    for key, value in s.items():
        print(f"{key}: {len(value) if isinstance(value, list) and key in ('weight_loads', 'gate_formulas') else ''}")
        if isinstance(value, list):
            for v in value:
                print(f"  {v}")
        else:
            print(f"  {value}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(dict(summary=s, files=m["files"]), indent=1))
        if args.before:
            earlier = json.loads(args.before.read_text())
            table = comparison_markdown(earlier["summary"], s, (earlier["files"], m["files"]))
            (args.out.parent / "comparison.md").write_text(table)


if __name__ == "__main__":
    main()
