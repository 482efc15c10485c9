"""catapult.sweep.dotted.set_dotted on a section that is not a mapping (``augment:`` written empty in
YAML reads as None): the grid's value replaces it with a section holding the key."""
from __future__ import annotations

from catapult.sweep.dotted import get_dotted, set_dotted


def test_a_section_that_is_none_or_a_scalar_becomes_a_mapping():
    mapping = {"data": {"augment": None, "name": "cifar10"}, "model": 3}
    set_dotted(mapping, "data.augment.flip", True)
    set_dotted(mapping, "model.width", 8)
    assert mapping == {"data": {"augment": {"flip": True}, "name": "cifar10"}, "model": {"width": 8}}
    assert get_dotted(mapping, "data.augment.flip") is True
