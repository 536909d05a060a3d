"""Typical bugs planted into lesson 03's exercises: each must make its check print FAIL."""

BUGS = {
    "3.1": [
        ("if not isinstance(value, kind) or wrong_bool:", "if not isinstance(value, kind):",
         "a bool passes as an int (bool is a subclass of int)"),
        ("        return default\n", "        return None\n", "the default is ignored"),
        ("        if default is REQUIRED:\n            raise", "        if default is None:\n            raise",
         "a missing parameter without a default returns the sentinel instead of raising"),
        ('should be {names}, got {value!r}', 'has the wrong type', "the message names neither type nor value"),
    ],
    "3.2": [
        ("if shape is not None and attr.data.shape != tuple(shape):", "if False:",
         "the shape is not checked"),
        ("attr.data.shape != tuple(shape)", "attr.data.shape != shape",
         "a shape given as a list never matches the array's tuple shape"),
        ("if attr is None or attr.data is None:", "if attr is None:",
         "a weight whose data was not loaded comes back as None"),
    ],
    "3.3": [
        ("        for kind in types:\n", "        for kind in types[:1]:\n", "only the first name is registered"),
        ("        return cls\n", "", "the decorator returns None, so the class name becomes None"),
        ("            LAYERS[kind] = cls\n", "            LAYERS.setdefault(kind, cls)\n",
         "registering a name again does not replace the earlier layer"),
    ],
    "3.4": [
        ("{op.where()}{hint}", "{hint}", "the message does not say which operator and line"),
        ("n=3, cutoff=0.6", "n=3, cutoff=1.0", "close names are never suggested"),
        ("    return LAYERS[op.type](op)", "    return LAYERS[op.type]", "returns the class, not a layer built from op"),
        ('hint = f"; did you mean {\', \'.join(close)}?" if close else ""', 'hint = "; did you mean ?"',
         "a suggestion is printed even when no name is close"),
    ],
    "3.5": [
        ("        self.calls += 1\n", "", "calls are not counted"),
        ("np.maximum(x.numpy(), 0)", "np.abs(x.numpy())", "abs instead of max(x, 0)"),
        ("        self.calls = 0\n", "        self.calls = 1\n", "the count starts at 1"),
    ],
}
