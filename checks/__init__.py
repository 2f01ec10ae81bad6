"""Checkers that prove a program compiles the way it should: graph breaks, recompiles, parity."""

__all__: list[str] = []
