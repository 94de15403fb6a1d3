"""Traces run without importing torch's compiler, and leave torch.compile as torch made it.

Each check runs in a fresh interpreter: the test process may have loaded ``torch._dynamo`` already
(then the guard does nothing, by design)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

_TRACE = """
import sys, torch
from torch.utils.flop_counter import FlopCounterMode
from fedbench.compiler_guard import compiler_left_out

def trace():  # a FLOP count of a Linear on meta: the hook and addmm's meta kernel are both compiler-guarded
    layer = torch.nn.Linear(8, 4, device="meta")
    with FlopCounterMode(display=False) as counter:
        layer(torch.empty(2, 8, device="meta")).sum().backward()
    return counter.get_total_flops()
"""


def _run(body: str) -> str:
    code = textwrap.dedent(_TRACE) + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_a_guarded_trace_does_not_import_the_compiler_and_the_next_unguarded_call_does():
    out = _run("""
        with compiler_left_out():
            guarded = trace()
            assert type(sys.modules["torch._dynamo"]).__name__ == "_StandIn"
        assert "torch._dynamo" not in sys.modules and "_dynamo" not in torch.__dict__
        assert "torch._dynamo.eval_frame" not in sys.modules  # the compiler was never loaded
        plain = trace()  # torch's wrappers forgot the guarded answer: this call loads the compiler
        assert "torch._dynamo.eval_frame" in sys.modules
        print(guarded, plain)
    """)
    guarded, plain = out.split()
    assert guarded == plain == str(2 * (2 * 8 * 4 * 2))  # forward + weight gradient (the input needs none)


def test_asking_the_stand_in_for_the_compiler_loads_the_real_one_and_torch_compile_works_after():
    out = _run("""
        with compiler_left_out():
            trace()
            config = torch._dynamo.config  # something needs the compiler mid-trace
            assert "torch._dynamo.eval_frame" in sys.modules
            trace()
        assert sys.modules["torch._dynamo"].config is config  # the real module stays
        with compiler_left_out():  # once loaded, the guard stands aside
            trace()
        compiled = torch.compile(lambda x: x * 2 + 1, backend="eager")
        print(compiled(torch.ones(3)).tolist())
    """)
    assert out.strip() == "[3.0, 3.0, 3.0]"


def test_nested_guards_leave_one_stand_in_and_remove_it_once():
    _run("""
        with compiler_left_out():
            outer = sys.modules["torch._dynamo"]
            with compiler_left_out():
                trace()
                assert sys.modules["torch._dynamo"] is outer
            assert sys.modules["torch._dynamo"] is outer
        assert "torch._dynamo" not in sys.modules
    """)


def test_the_stand_in_forgets_its_answers_whatever_torch_names_the_memo():
    from fedbench.compiler_guard import _StandIn

    def guarded():
        return 1

    stand_in = _StandIn()
    guarded.__dynamo_disable = stand_in.disable(guarded)  # what torch's wrapper stores today
    guarded._dynamo_disabled_fn = stand_in.disable(guarded)  # a memo under another name
    guarded.unrelated = guarded  # not a memo: kept
    stand_in.forget()
    assert set(vars(guarded)) == {"unrelated"}
