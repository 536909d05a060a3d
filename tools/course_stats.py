"""How much of each lesson the student writes: exercises, lines inside the solution markers, and the
code lines of the lesson's export cells.

    python tools/course_stats.py            # a table over every lesson in solutions/
    python tools/course_stats.py --lesson 4 # one lesson (repeatable)

A code line is a non-blank line that is not only a comment, and not a `#|` directive or a solution
marker. Student-written lines are the code lines between `### BEGIN SOLUTION` and `### END SOLUTION`
of exercise cells that are also exported; exported lines are the code lines of all `#| export` cells.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools import sync  # noqa: E402


@dataclass(frozen=True)
class Stats:
    """One lesson's figures."""

    lesson: str
    exercises: int
    student: int
    exported: int

    @property
    def ratio(self) -> float:
        return self.student / self.exported if self.exported else 0.0


def _is_code(line: str) -> bool:
    text = line.strip()
    return bool(text) and not text.startswith("#")


def lesson_stats(lesson: sync.Lesson) -> Stats:
    """Count exercises, student-written and exported code lines of one lesson."""
    nb = sync.read_lesson(lesson)
    student = exported = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        found = sync.directives(cell.source)
        if "export" not in found:
            continue
        inside = False
        for line in sync.strip_directives(cell.source).splitlines():
            if line.strip() == sync.BEGIN:
                inside = True
            elif line.strip() == sync.END:
                inside = False
            elif _is_code(line):
                exported += 1
                student += inside and "exercise" in found
    return Stats(lesson.source.stem, len(sync.exercises(nb, lesson.number)), student, exported)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lesson", type=int, action="append", metavar="NN", help="only this lesson")
    args = parser.parse_args(argv)
    rows = [lesson_stats(lesson) for lesson in sync.lessons()
            if not args.lesson or lesson.number in args.lesson]
    print(f"| {'lesson':<16} | exercises | student lines | exported lines | ratio |")
    print(f"|{'-' * 18}|-----------|---------------|----------------|-------|")
    for s in rows:
        print(f"| {s.lesson:<16} | {s.exercises:>9} | {s.student:>13} | {s.exported:>14} | {s.ratio:>5.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
