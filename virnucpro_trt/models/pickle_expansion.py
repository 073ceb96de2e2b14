"""How large a pickle's objects are once their shared parts are counted as often as they are referenced.

A pickle may reference one object many times through its memo: ``t1 = (t0, t0)``, ``t2 = (t1, t1)``,
... is 60 levels and a few hundred bytes, yet anything that walks it as a tree (hashing it as a dict key,
``repr`` or ``str``, comparing) does 2^60 steps, and one 1 MB string doubled 20 times asks ``str`` for a
terabyte. The unpickler itself hashes keys and set members while it loads, inside C code where no signal
handler runs, so such a file would hang a loader for good, Ctrl-C and SIGTERM included. Torch checkpoints
are shallow trees of a few thousand nodes: a state dict of tensor rebuild calls, a config, at most a
module tree. So before unpickling, the opcodes are walked (never executed) to build the object graph they
describe (refused past :data:`MAX_OBJECTS` objects), and a pickle is refused whose largest object,
expanded as a tree with each string counted by its length, exceeds :data:`MAX_EXPANDED`, or that nests
deeper than :data:`MAX_DEPTH`.
"""

from __future__ import annotations

import pickletools
from collections.abc import Iterator

from virnucpro_trt.errors import CheckpointError, one_line

MAX_OBJECTS = 1_000_000  # a 3B-parameter state dict describes ~10^4 (and walking 10^6 takes seconds)
MAX_EXPANDED = 64_000_000  # objects + string characters, shared parts counted each time referenced
MAX_DEPTH = 200  # a whole pickled module nests ~15 deep; C code recursing on far deeper input may crash

_MARK = -1
# Opcodes that add their other operands to the object below them and leave that object on the stack.
_IN_PLACE = frozenset({"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"})
_PUT = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GET = frozenset({"GET", "BINGET", "LONG_BINGET"})


class PickleTooExpansive(CheckpointError):
    """The pickle describes objects that would take too long to hash or walk (or nest too deeply)."""


class _TooDeep(Exception):
    """The walk went past :data:`MAX_DEPTH` (the caller names the file)."""


def _graph(data: bytes, where: str) -> tuple[list[list[int]], list[int]]:
    """The children of every object the opcodes build (node ids are creation order), with repeats, and
    each object's own weight (a string's or bytes' length, else 1)."""
    children: list[list[int]] = []
    weights: list[int] = []
    stack: list[int] = []
    memo: dict[int, int] = {}

    def new(kids: list[int], weight: int = 1) -> int:
        if len(children) >= MAX_OBJECTS:
            raise PickleTooExpansive(
                f"{where}: the pickle describes more than {MAX_OBJECTS:,} objects (a checkpoint holds "
                "thousands): refused"
            )
        children.append(kids)
        weights.append(weight)
        return len(children) - 1

    def pop_to_mark() -> list[int]:
        items: list[int] = []
        while stack and stack[-1] != _MARK:
            items.append(stack.pop())
        if not stack:
            raise ValueError("no mark on the stack")
        stack.pop()
        items.reverse()
        return items

    for opcode, arg, _ in pickletools.genops(data):
        name = opcode.name
        if name in _PUT:
            memo[int(arg)] = stack[-1]
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name in _GET:
            stack.append(memo[int(arg)])
        elif name == "MARK":
            stack.append(_MARK)
        elif name == "DUP":
            stack.append(stack[-1])
        elif name in ("POP", "STOP"):
            stack.pop()
        elif name == "POP_MARK":
            pop_to_mark()
        elif name in ("PROTO", "FRAME"):
            continue
        else:
            before = [s.name for s in opcode.stack_before]
            if "mark" in before:
                items = pop_to_mark()
                items = [stack.pop() for _ in before[: before.index("mark")]][::-1] + items
            else:
                items = [stack.pop() for _ in before][::-1]
            if any(item == _MARK for item in items):
                raise ValueError(f"{name} takes a mark as an operand")
            if name in _IN_PLACE:
                children[items[0]].extend(items[1:])
                stack.append(items[0])
            elif name == "READONLY_BUFFER":
                stack.append(items[0])
            elif opcode.stack_after:
                stack.append(new(items, max(1, len(arg)) if isinstance(arg, str | bytes) else 1))
    return children, weights


def _walk(children: list[list[int]], weights: list[int]) -> Iterator[tuple[int, int, int]]:
    """``(node, expanded size, depth)`` of every node, children before parents (iterative, so a deep
    pickle cannot exhaust the interpreter's recursion; one deeper than :data:`MAX_DEPTH` is refused as
    soon as the walk is that deep). A reference back to a node still being walked (a list that holds
    itself) counts as one: walkers stop at cycles, they do not loop on them."""
    size = [0] * len(children)
    depth = [0] * len(children)
    state = [0] * len(children)  # 0 new, 1 on the path, 2 done
    for root in range(len(children)):
        if state[root]:
            continue
        path = [(root, iter(children[root]))]
        state[root] = 1
        while path:
            node, pending = path[-1]
            child = next(pending, None)
            if child is None:
                path.pop()
                kids = [c for c in children[node] if state[c] == 2]
                size[node] = min(MAX_EXPANDED + 1, weights[node] + len(children[node]) - len(kids)
                                 + sum(size[c] for c in kids))  # fmt: skip
                depth[node] = 1 + max((depth[c] for c in kids), default=0)
                state[node] = 2
                yield node, size[node], depth[node]
            elif state[child] == 0:
                if len(path) >= MAX_DEPTH:
                    raise _TooDeep
                state[child] = 1
                path.append((child, iter(children[child])))


def check_pickle_expansion(data: bytes, where: str) -> None:
    """Refuse (:class:`PickleTooExpansive`, or :class:`CheckpointError` for opcodes that do not form a
    pickle) the pickle ``data`` before it is unpickled; ``where`` names the file in the message."""
    try:
        children, weights = _graph(data, where)
    except (ValueError, IndexError, KeyError) as exc:  # genops' own errors, or operands that are not there
        raise CheckpointError(f"{where}: not a valid pickle ({one_line(exc, 200, name=False)})") from None
    too_deep = PickleTooExpansive(f"{where}: the pickle nests objects more than {MAX_DEPTH} deep: refused")
    try:
        for _, size, depth in _walk(children, weights):
            if size > MAX_EXPANDED:
                raise PickleTooExpansive(
                    f"{where}: the pickle references its own objects so often that it expands to more than "
                    f"{MAX_EXPANDED:,} objects and characters (a checkpoint holds thousands): refused, as "
                    "reading it would not finish"
                )
            if depth > MAX_DEPTH:
                raise too_deep
    except _TooDeep:
        raise too_deep from None
