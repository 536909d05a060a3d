"""Lesson 02's planted bugs: (exact text of the solution cell, buggy replacement, what the bug is)."""

BUGS = {
    '2.1': [
        ('if text in ("None", "()", "[]"):', 'if text == "None":', '() and [] are not read as None'),
        ('    if INT.fullmatch(text):\n        return int(text)\n    if FLOAT.fullmatch(text):\n        return float(text)', '    if FLOAT.fullmatch(text):\n        return float(text)\n    if INT.fullmatch(text):\n        return int(text)', 'tries float first: 48 becomes 48.0'),
        ('split_top_level(text[1:-1])', 'text[1:-1].split(",")', 'splits at commas inside nested brackets'),
        ('return text == "True"', 'return bool(text)', "'False' becomes True"),
    ],
    '2.2': [
        ('-1 if d == "?" else int(d)', '0 if d == "?" else int(d)', 'an unknown size ? becomes 0, not -1'),
        ('if kind not in PNNX_DTYPES:', 'if kind is None:', 'an unknown element type is not a PnnxError'),
        ('for d in (dims or "").split(",") if d)', 'for d in (dims or "").split(","))', 'a scalar () fails on the empty string'),
    ],
    '2.3': [
        ('heapq.heappop(ready)', 'ready.pop()', 'a stack, not a heap of file positions: ties leave file order'),
        ('if len(order) < len(operators):', 'if False:', 'a cycle is not detected'),
        ('if waiting[after] == 0:', 'if waiting[after] <= 1:', 'an operator runs before all its inputs are ready'),
    ],
    '2.4': [
        ('keep = {name for op in order if op.type == "pnnx.Output" for name in op.inputs}', 'keep = set()', 'frees the graph outputs too'),
        ('last_reader[name] = op.name', 'last_reader.setdefault(name, op.name)', 'frees each operand after its producer, not its last reader'),
    ],
    '2.5': [
        ('owner = array if array.base is None else array.base', 'owner = array', 'views counted as separate memory, so shared bytes count twice'),
        ('owners[id(owner)] = getattr(owner, "nbytes", array.nbytes)', 'owners[id(owner)] = array.nbytes', 'a view counts only its own bytes, not the whole buffer it keeps alive'),
        ('getattr(owner, "nbytes", array.nbytes)', 'owner.nbytes', 'an owner without nbytes (bytes under np.frombuffer) is not handled'),
    ],
    '2.6': [
        ('found = [alias.get(name, name) for name in names]', 'found = list(names)', 'ignores the aliases an unpack made'),
        ('(spread(packed[name]) if name in packed else [name])', '(packed[name] if name in packed else [name])', 'a tuple of a tuple is not flattened'),
        ('elif op.type == "pnnx.Output" and len(inputs) > 1:', 'elif False:', 'a pnnx.Output of a tuple stays one output'),
        ('if len(inputs) != len(op.outputs):', 'if False:', 'an unpack of the wrong count is silently truncated'),
    ],
}
