"""Private torch names stay behind the boundary: checks/_compat/ for the checkers, model/_torch.py
for the model.

A torch release that moves a private name then breaks those files and nothing else. Names are read
from the code (attributes, imports), not from strings: a hint that tells the user to call
"torch._dynamo.mark_dynamic" is text for a person, not a use.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]
BOUNDARY = [ROOT / "checks" / "_compat", ROOT / "model" / "_torch.py"]


def _private(dotted: str) -> bool:
    """Whether a dotted torch name has a private part: `torch._dynamo`, `torch.ops.aten._x`."""
    parts = dotted.split(".")
    return any(part.startswith("_") and not part.startswith("__") for part in parts[1:])


def _dotted(node: ast.expr, aliases: dict[str, str]) -> str | None:
    """`torch._dynamo.reset` for that attribute chain, its root resolved through the file's
    imports (`import torch.distributed as dist`); None for a chain not rooted at torch."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in aliases:
        return None
    return ".".join([aliases[node.id], *reversed(parts)])


def private_torch_names(source: str) -> list[tuple[int, str]]:
    """(line, name) of each private torch name the code in `source` uses."""
    tree = ast.parse(source)
    aliases = {"torch": "torch"}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "torch":
                    aliases[alias.asname or "torch"] = alias.name if alias.asname else "torch"
                    found.append((node.lineno, alias.name))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "torch":
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                found.append((node.lineno, f"{node.module}.{alias.name}"))
    for node in ast.walk(tree):
        # The outermost chain only: `torch._dynamo.reset` once, not again as `torch._dynamo`.
        if isinstance(node, ast.Attribute) and not isinstance(getattr(node, "parent", None),
                                                               ast.Attribute):
            dotted = _dotted(node, aliases)
            if dotted is not None:
                found.append((node.lineno, dotted))
        for child in ast.iter_child_nodes(node):
            child.parent = node
    return sorted({(line, name) for line, name in found if _private(name)})


def _outside_boundary() -> list[Path]:
    files = sorted((ROOT / "checks").rglob("*.py")) + sorted((ROOT / "model").rglob("*.py"))
    return [path for path in files
            if not any(path == place or place in path.parents for place in BOUNDARY)]


def test_no_private_torch_name_outside_the_boundary():
    offenders = [f"{path.relative_to(ROOT)}:{line}: {name}"
                 for path in _outside_boundary()
                 for line, name in private_torch_names(path.read_text(encoding="utf-8"))]
    assert not offenders, ("private torch names outside checks/_compat/ and model/_torch.py:\n"
                           + "\n".join(offenders))


def test_the_boundary_exists():
    assert all(place.exists() for place in BOUNDARY), BOUNDARY
    assert len(_outside_boundary()) > 20  # the scan reads the project, not an empty folder


def test_each_way_of_naming_a_private_torch_name_is_caught():
    source = '''
import torch
import torch._dynamo
import torch.distributed._functional_collectives as funcol
import torch.distributed as dist
from torch._inductor import config
from torch.testing._internal.distributed.fake_pg import FakeStore
from torch.utils import _pytree

torch._dynamo.reset()
torch.ops.aten._weight_int4pack_mm(a, b)
dist._functional_collectives.all_reduce(x)
except_ = torch._dynamo.exc.Unsupported
'''
    assert private_torch_names(source) == [
        (3, "torch._dynamo"),
        (4, "torch.distributed._functional_collectives"),
        (6, "torch._inductor.config"),
        (7, "torch.testing._internal.distributed.fake_pg.FakeStore"),
        (8, "torch.utils._pytree"),
        (10, "torch._dynamo.reset"),
        (11, "torch.ops.aten._weight_int4pack_mm"),
        (12, "torch.distributed._functional_collectives.all_reduce"),
        (13, "torch._dynamo.exc.Unsupported"),
    ]


def test_public_names_strings_and_other_libraries_pass():
    source = '''
"""Call torch._dynamo.mark_dynamic(t, 0) on the input."""
import torch
import torch.distributed as dist
from torch.nn.attention import sdpa_kernel

hint = "mark it with torch._dynamo.mark_static_address(t)"
torch.compiler.reset()
print(torch.__version__, torch.__file__)
dist.all_reduce(x)
numpy._private_thing
'''
    assert private_torch_names(source) == []
