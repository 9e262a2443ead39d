"""Procedural tasks with verifiable answers, used by the demo and the tiny configs."""
