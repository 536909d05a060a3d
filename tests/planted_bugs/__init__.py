"""Planted-bug tables, one per lesson (lesson_NN.py): see tests/test_planted_bugs.py and AUTHORING.md."""
