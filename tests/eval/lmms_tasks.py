"""lmms-eval's own task code for mmvp, blink, vstar_bench and mmstar, loaded from the installed package's files.

Importing `lmms_eval.tasks` runs its whole task registry, which needs packages the tests do not install
(`evaluate`, …); the four tasks' `utils.py` need only loguru, PIL and two helpers of `lmms_eval.tasks._task_utils`.
So `lmms_task_code()` puts a bare stand-in for the `lmms_eval.tasks` package (its real folder as the search path,
none of its `__init__`) in `sys.modules` while the tests use the modules, and takes it out again after.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import types
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

TASKS = ("mmvp", "blink", "vstar_bench", "mmstar")


def lmms_root() -> Path:
    lmms_eval = pytest.importorskip("lmms_eval")
    pytest.importorskip("loguru")
    return Path(lmms_eval.__file__).parent


def task_yaml(task: str) -> dict:
    """A task's `_default_template_yaml`, read as lmms-eval's `load_default_template_yaml` reads it (the `!function`
    lines dropped)."""
    path = lmms_root() / "tasks" / task / "_default_template_yaml"
    return yaml.safe_load("".join(line for line in path.read_text().splitlines(keepends=True)
                                  if "!function" not in line))


def default_kwargs(task: str) -> dict:
    """The `lmms_eval_specific_kwargs` lmms-eval hands a model without its own entry (qwen2_5_vl has none)."""
    return task_yaml(task)["lmms_eval_specific_kwargs"]["default"]


def class_defaults(relative: str, class_name: str) -> dict:
    """The keyword defaults of a model class's `__init__`, read from its source (importing it needs decord, CUDA
    wheels, …): {name: value} for the literal or arithmetic defaults."""
    tree = ast.parse((lmms_root() / relative).read_text())
    init = next(node for cls in ast.walk(tree) if isinstance(cls, ast.ClassDef) and cls.name == class_name
                for node in cls.body if isinstance(node, ast.FunctionDef) and node.name == "__init__")
    args = init.args.args[len(init.args.args) - len(init.args.defaults):]
    out = {}
    for arg, default in zip(args, init.args.defaults):
        try:
            out[arg.arg] = eval(compile(ast.Expression(default), "<default>", "eval"), {})  # constants and arithmetic
        except Exception:  # a name or call: not needed here
            pass
    return out


@contextmanager
def lmms_task_code():
    """{task: its utils module} for the four tasks, with `lmms_eval.tasks._task_utils` importable while in use."""
    root = lmms_root()
    names = ("lmms_eval.tasks", "lmms_eval.tasks._task_utils")
    saved = {name: sys.modules.get(name) for name in names}
    stand_in = types.ModuleType("lmms_eval.tasks")
    stand_in.__path__ = [str(root / "tasks")]
    sys.modules["lmms_eval.tasks"] = stand_in
    sys.modules.pop("lmms_eval.tasks._task_utils", None)
    modules = {}
    try:
        for task in TASKS:
            name = f"lmms_eval.tasks.{task}.utils"
            spec = importlib.util.spec_from_file_location(name, root / "tasks" / task / "utils.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            modules[task] = module
        yield modules
    finally:
        for name in [n for n in sys.modules if n.startswith("lmms_eval.tasks.")]:
            del sys.modules[name]
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
