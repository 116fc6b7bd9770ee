"""Pass one split between processes (dumpsaver.decode.Part): the directory cut at any
entry, each part scanned on its own from the right ``prev``, must give the scan of the
whole, damage and all, and pass two by parts the pages of the whole.  The order rule
looks ahead and judges each entry against the last accepted PFN, so the cases are
damage right at, before and after the cut."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dumpsaver.decode import Dump, Part, Scan
from dumpsaver.physmem import PhysMem

from ..machine import Sim
from .crafted import Crafted


def _damaged(machine: Sim) -> tuple[Crafted, list[int]]:
    """The machine with damage of every kind the rule cares about, valid CRCs where the
    kind needs them, at a few places; returns the indices damaged."""
    c = Crafted(machine)
    n = len(c.entries)
    at = [n // 5, n // 5 + 1, n // 3, n // 2, n // 2 + 2, (2 * n) // 3, n - 2]
    c.set_entry(at[0], pfn=c.header.mem_pages - 1)  # far ahead: above what follows
    c.set_entry(at[1], pfn=0)  # behind
    c.set_entry(at[2], pfn=c.entries[at[2] - 1].pfn)  # a repeat of the one before
    raw = bytearray(c.entries[at[3]].encode())
    raw[3] ^= 0xFF  # the entry's own CRC fails: its fields mean nothing
    c.write(c.header.dir_offset + at[3] * 32, bytes(raw))
    c.set_entry(at[4], pfn=c.entries[at[4] + 2].pfn)  # ahead by two
    i = next(k for k in range(at[5], n) if not c.entries[k].zero)
    c.set_entry(i, crc=c.entries[i].crc ^ 1)  # the page's CRC fails
    c.set_entry(at[6], pfn=c.header.mem_pages + 3)  # beyond memory
    return c, [*at[:5], i, at[6]]


def _state(s: Scan) -> tuple[object, ...]:
    return (list(s.runs), s.good, s.zero, s.stored_bytes, dict(s.damaged), s.damaged_pfns,
            s.last_accepted)  # fmt: skip


@pytest.fixture
def opened(machine: Sim) -> Iterator[tuple[Dump, list[int]]]:
    _c, damaged = _damaged(machine)
    with PhysMem(str(machine.mem), machine.area) as mem:
        yield Dump(mem, machine.header_paddr), damaged


def test_any_cut_scans_as_the_whole(opened: tuple[Dump, list[int]]) -> None:
    d, damaged = opened
    n = d.header.nr_entries
    whole = d.scan()
    assert whole.nr_damaged >= len(damaged) - 1  # the damage is there to be judged
    pages = list(d.pages(whole))
    wrong_guesses = 0
    for cut in range(n + 1):
        s = d.scan(Part(0, cut))
        prev = s.last_accepted
        d.scan(Part(cut, n, prev), into=s)
        assert _state(s) == _state(whole), cut
        by_parts = list(d.pages(whole, Part(0, cut))) + list(d.pages(whole, Part(cut, n, prev)))
        assert by_parts == pages, cut
        wrong_guesses += d.guess_prev(cut) != prev
    # The guess of a forked scanner is wrong only next to damage (and then checked):
    # here at a few cuts, not at most.
    assert 0 < wrong_guesses <= 4 * len(damaged)


def test_a_part_from_a_wrong_prev_differs(opened: tuple[Dump, list[int]]) -> None:
    """The check that makes the guess safe is needed: judged from another ``prev``,
    the upper part of the directory is decided otherwise (so a wrong guess must be
    scanned again, as the ELF writer does)."""
    d, _damaged = opened
    n = d.header.nr_entries
    cut = n // 2
    lower = d.scan(Part(0, cut))
    right = d.scan(Part(cut, n, lower.last_accepted))
    wrong = d.scan(Part(cut, n, d.header.mem_pages - 1))
    assert right.good > 0 and wrong.good == 0


#: What one entry can be made to say (valid entry CRC unless "entry-crc").
DAMAGE = ["far-ahead", "behind", "repeat", "ahead-by-one", "beyond", "entry-crc", "page-crc"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_damage_any_cut(machines: dict[str, Sim], data: st.DataObject) -> None:
    """Random damage at random entries, cut at a random entry near it: the parts, each
    from the right ``prev``, give the scan of the whole; a part from the guessed
    ``prev`` does too whenever the guess is right."""
    with tempfile.TemporaryDirectory() as tmp:
        m = machines["m1"].copy(Path(tmp) / "m")
        c = Crafted(m)
        n = len(c.entries)
        spots = data.draw(st.lists(st.tuples(st.integers(1, n - 2), st.sampled_from(DAMAGE)),
                                   min_size=1, max_size=5))  # fmt: skip
        for i, kind in spots:
            e = c.entries[i]
            if kind == "entry-crc":
                raw = bytearray(e.encode())
                raw[0] ^= 0x55
                c.write(c.header.dir_offset + i * 32, bytes(raw))
            elif kind == "page-crc":
                c.set_entry(i, crc=e.crc ^ 1)
            else:
                pfn = {"far-ahead": c.header.mem_pages - 1, "behind": 0,
                       "repeat": c.entries[i - 1].pfn, "ahead-by-one": c.entries[i + 1].pfn,
                       "beyond": c.header.mem_pages + 1}[kind]  # fmt: skip
                c.set_entry(i, pfn=pfn)
        near = spots[0][0]
        cut = data.draw(st.integers(max(0, near - 4), min(n, near + 4)))
        with PhysMem(str(m.mem), m.area) as mem:
            d = Dump(mem, m.header_paddr)
            whole = d.scan()
            lower = d.scan(Part(0, cut))
            prev, guess = lower.last_accepted, d.guess_prev(cut)
            upper = d.scan(Part(cut, n, guess))
            d.scan(Part(cut, n, prev), into=lower)
            assert _state(lower) == _state(whole)
            if guess == prev:
                first = d.scan(Part(0, cut))
                first.extend(upper)
                assert _state(first) == _state(whole)
