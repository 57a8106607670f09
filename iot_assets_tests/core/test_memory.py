"""Which collections run between the days of a step and before a step (iot_assets.core.memory)."""

import gc

from iot_assets.core.memory import release_unused_memory


def _generations_collected(call) -> list[int]:
    seen: list[int] = []

    def on_collect(phase, info):
        if phase == "start":
            seen.append(info["generation"])

    gc.callbacks.append(on_collect)
    try:
        call()
    finally:
        gc.callbacks.remove(on_collect)
    return seen


def test_between_days_collects_only_the_young_generations():
    assert _generations_collected(lambda: release_unused_memory(between_days=True)) == [1]


def test_before_a_step_collects_everything():
    assert _generations_collected(release_unused_memory) == [2]


def test_a_young_cycle_is_freed_between_days():
    class Node:
        pass

    gc.collect()  # whatever was pending is gone: the cycle below is the only garbage
    first, second = Node(), Node()
    first.other, second.other = second, first  # a cycle: reference counts alone never free it
    del first, second
    freed = []
    gc.callbacks.append(lambda phase, info: freed.append(info["collected"]) if phase == "stop" else None)
    try:
        release_unused_memory(between_days=True)
    finally:
        gc.callbacks.pop()
    assert freed and freed[0] >= 2
