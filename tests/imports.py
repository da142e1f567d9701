"""What a Python source file imports, read with ``ast`` (the import-direction test and the Lambda
package's completeness test)."""

from __future__ import annotations

import ast


def top_level_imports(source: str) -> set[str]:
    """The top-level names ``source`` imports absolutely (``import a.b``, ``from a.b import c``:
    ``a``), lazily imported ones too."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update(name.split(".")[0] for name in names)
    return found
