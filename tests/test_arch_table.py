"""The architecture table is the one place that knows model families.

Only models/arch.py and the tiny-config builder (models/tiny.py) branch on families: no other module compares,
matches or lists a family name, or compares ``config.model_type``. Fused q/k/v parts take their widths from the
config, so a fused layout under grouped-query attention splits correctly."""
import ast
from dataclasses import replace
from pathlib import Path

import circuitdistill
from circuitdistill.models.arch import ARCH_TABLES, Shape

PACKAGE = Path(circuitdistill.__file__).parent
EXEMPT = {"models/arch.py", "models/tiny.py"}
FAMILY_NAMES = {name.lower() for name in ARCH_TABLES} | {"llama", "qwen2", "gpt2", "mistral", "gemma"}
ALLOWED = {
    ("tasks/vocab.py", "gpt2"),  # the name of the offline GPT-2 BPE tokenizer (--tokenizer gpt2), not a family
}


def _family(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.lower() in FAMILY_NAMES:
        return node.value
    return None


def _branch_operands(node: ast.AST) -> list[ast.AST]:
    """Expressions whose string constants decide a branch or form a lookup on a family name."""
    if isinstance(node, ast.Compare):
        return [node.left, *node.comparators]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return list(node.elts)
    if isinstance(node, ast.Dict):
        return [k for k in node.keys if k is not None]
    if isinstance(node, ast.MatchValue):
        return [node.value]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("startswith", "endswith")):
        return list(node.args)
    return []


def _violations(path: Path, rel: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        for operand in _branch_operands(node):
            name = _family(operand)
            if name is not None and (rel, name) not in ALLOWED:
                found.append(f"{rel}:{operand.lineno}: family name {name!r}")
        if isinstance(node, ast.Compare) and any(isinstance(x, ast.Attribute) and x.attr == "model_type"
                                                 for x in (node.left, *node.comparators)):
            found.append(f"{rel}:{node.lineno}: compares model_type")
    return found


def test_no_family_branches_outside_the_architecture_table():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel not in EXEMPT:
            found += _violations(path, rel)
    assert not found, "move this family knowledge into models/arch.py (an ArchTable field):\n" + "\n".join(found)


def test_the_check_sees_the_forms_it_forbids(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("FAMS = ('llama', 'mistral')\n"
                   "def f(model, t):\n"
                   "    if model.config.model_type == t: pass\n"
                   "    if t.startswith('gpt2'): pass\n"
                   "    return {'qwen2': 1}.get(t)\n")
    assert len(_violations(src, "m.py")) == 5


def test_fused_qkv_parts_follow_the_config_widths_under_gqa():
    fused = replace(ARCH_TABLES["gpt2"], family="fused-gqa")
    shape = Shape(n_layers=2, n_heads=8, n_kv_heads=2, d_head=16, d_model=128)
    assert fused.qkv_widths(shape) == (128, 32, 32)
    assert [fused.qkv_offset(c, shape) for c in "qkv"] == [0, 128, 160]
    assert [ARCH_TABLES["llama"].qkv_offset(c, shape) for c in "qkv"] == [0, 0, 0]
