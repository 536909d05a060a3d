"""Typical bugs planted into lesson 05's exercises: each must make its check print FAIL."""

BUGS = {
    "5.1": [
        ("        if text[column].isspace():\n            column += 1\n            continue\n", "",
         "spaces are not skipped"),
        ("Token(match.lastgroup, match.group(), column)", "Token(match.lastgroup, match.group(), len(tokens))",
         "the token's index recorded instead of its column"),
        ("        column = match.end()\n", "        column += 1\n", "moves one character, not past the token"),
    ],
    "5.2": [
        ("        return Input(int(token.text[1:]))", "        return Input(int(token.text[1]))",
         "only the first digit of @12"),
        ("return Number(int(token.text) if is_int else float(token.text))", "return Number(float(token.text))",
         "integers become floats"),
        ("        if len(args) != arity:\n", "        if len(args) < arity:\n", "too many arguments accepted"),
        ('        self.take("punct", "[")\n        return ListOf(self.args("]"))',
         '        self.take("punct", "[")\n        return ListOf(self.args(")"))', "a list closed by ')'"),
    ],
    "5.3": [
        ("    if parser.peek() is not None:\n        raise", "    if False:\n        raise",
         "tokens left over after the expression are ignored"),
        ('raise parser.fail(f"unexpected {parser.peek().text!r} after the expression")',
         'raise ExpressionError(f"unexpected {parser.peek().text!r} after the expression")',
         "the error does not say the column"),
    ],
    "5.4": [
        ("return [node for child in children for node in to_rpn(child)] + [tree]",
         "return [tree] + [node for child in children for node in to_rpn(child)]", "pre-order: the call before its arguments"),
        ("return [node for child in children for node in to_rpn(child)] + [tree]",
         "return [node for child in children[::-1] for node in to_rpn(child)] + [tree]", "arguments in reverse order"),
        ("tree.items if isinstance(tree, ListOf) else ()", "()", "list items are not visited"),
    ],
    "5.5": [
        ("stack.append(inputs[node.index])", "stack.append(inputs[0])", "every input reads @0"),
        ("            args = stack[len(stack) - count:]\n", "            args = stack[len(stack) - count:][::-1]\n",
         "arguments popped in reverse: sub(@1,@0) computes @0 - @1"),
        ("if isinstance(node, Call) else args)", "if isinstance(node, Call) else tuple(args))",
         "a list becomes a tuple"),
    ],
}
