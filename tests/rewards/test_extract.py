"""Answer extraction (extract.py) and answer values (values.py), rule by rule."""
import pytest

from jaxpost.rewards import extract
from jaxpost.rewards import values


@pytest.mark.parametrize("completion,mode,text,source", [
    (r"so \boxed{\frac{\sqrt{3}}{2}} it is", "boxed", r"\frac{\sqrt{3}}{2}", "boxed"),  # nested braces kept
    ("<answer> 7 </answer>", "answer_tag", "7", "answer_tag"),
    (r"<answer>\boxed{7}</answer>", "answer_tag", "7", "answer_tag"),               # a box inside the tag
    ("6 + 1 = 7\n#### 7", "gsm8k", "7", "gsm8k"),
    ("So the final answer is: 7. Done.", "answer_is", "7", "answer_is"),             # up to the sentence end
    ("**Answer:** 3.5.", "answer_is", "3.5", "answer_is"),                         # '.' in 3.5 ends nothing
    ("The answer is 7. \n#### 7", "anchored", "7", "gsm8k"),                        # gsm8k outranks answer_is
    (r"The answer is 8. \boxed{7}", "flexible", "7", "boxed"),                      # boxed outranks answer_is
    ("6 + 1 = 7", "flexible", "7", "fallback"),
    ("It is -7.", "flexible", "-7", "fallback"),                                    # a sign, not a minus
])
def test_extract_answer(completion, mode, text, source):
  assert extract.extract_answer(completion, mode) == extract.Answer(text, source)


@pytest.mark.parametrize("completion,mode", [
    ("6 + 1 = 7", "anchored"),                         # no anchor, no fallback
    (r"\boxed{7}", "gsm8k"),                           # a mode reads only its anchors
    (r"The answer is 7. \boxed{}", "flexible"),        # the empty box decides
    (r"\boxed{6} and \boxed{7}", "boxed"),             # boxes that disagree
    (r"6 + 1 = 7 so \boxed{7", "flexible"),            # an unclosed box: cut off, no fallback
    ("<answer>7</answer> <answer>7", "flexible"),      # the last tag is unclosed
    ("3 - 7", "flexible"),                             # 7 is subtracted, not a result
    ("7 + ", "flexible"), ("7 =", "flexible"),         # an operand before an operator or '='
    ("3 x 7", "flexible"), ("6 plus 1 times 7", "flexible"), ("6 or 7", "flexible"), ("6 and 7", "flexible"),
    ("it is 14 divided by 2", "flexible"),
])
def test_no_answer(completion, mode):
  assert extract.extract_answer(completion, mode) is None


def test_agreeing_anchors_compare_values_not_text():
  """\\frac{1}{2} and 0.5 are one answer written twice; 0.5 and 0.25 are two."""
  assert extract.extract_answer(r"\boxed{\frac{1}{2}} = \boxed{0.5}", "boxed") == extract.Answer("0.5", "boxed")
  assert extract.extract_answer(r"\boxed{0.5} or \boxed{0.25}", "boxed") is None


def test_fallback_refuses_a_clause_copied_from_the_prompt():
  """'Tom read 30 pages on Monday' is 6 words of the prompt around 30: a copy. 'He read 30 pages on
  Monday' is not a run of the prompt's words; 'so 30' (2 words) is too short to call a copy."""
  prompt = "Tom read 30 pages on Monday and 31 pages on Tuesday. How many pages did he read on Monday?"
  assert extract.extract_answer("Tom read 30 pages on Monday", prompt=prompt) is None
  assert extract.extract_answer("What is 12", prompt="What is 12 times 1?") is None  # cut at the budget
  assert extract.extract_answer("He read 30 pages on Monday.", prompt=prompt).text == "30"
  assert extract.extract_answer("so 30", prompt=prompt).text == "30"
  assert extract.extract_answer("Tom read 30 pages on Monday", prompt="").text == "30"  # no prompt, no check


def test_prompt_text_reads_every_record_form():
  assert extract.prompt_text({"prompt": "p"}) == "p"
  messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
              {"role": "assistant", "content": "a"}]
  assert extract.prompt_text({"messages": messages}) == "s\nu"
  assert extract.prompt_text({"question": "q"}) == "q" and extract.prompt_text({"problem": "m"}) == "m"


def test_bad_mode_is_named():
  with pytest.raises(ValueError, match=r"unknown answer extraction mode 'strict': known are \['anchored'"):
    extract.extract_answer("7", "strict")


@pytest.mark.parametrize("value,unevaluated", [
    ("101", False), ("-0.5", False), (".5", False), ("3/4", False), (r"\frac{3}{4}", False), ("(5)", False),
    (r"2\sqrt{3}", False), (r"\sqrt{2}", False), ("x+1", False), ("3, 5", False), ("1,000", False),
    ("15+86", True), ("48/2", True), (r"\frac{202}{2}", True), ("2^{10}", True), (r"\sqrt{16}", True),
    (r"3 \times 4", True), (r"\frac{1}{2} + \frac{1}{4}", True), ("(1+2)", True), ("101 - 0", True),
])
def test_is_unevaluated(value, unevaluated):
  assert values.is_unevaluated(value) is unevaluated


@pytest.mark.parametrize("span,value", [
    (r"$\frac{3}{4}$ of the cake.", r"\frac{3}{4}"), ("72 clips altogether", "72"), ("x = 5", "5"),
    ("15 + 86 = 101", "101"), (r"\$1{,}000.", "1,000"), (r"5 \text{ cm}", "5"), ("**72**", "72"),
    ("15 + 86 =", None), ("15 plus 86", None), ("100 or 101", None), (r"100 \text{ or } 101", None), ("", None),
])
def test_answer_value(span, value):
  assert values.answer_value(span) == value


@pytest.mark.parametrize("value,number", [
    ("1,234.5", 1234.5), ("-3/4", -0.75), (r"\frac{3}{4}", 0.75), ("50%", 50), ("x", None), ("1/0", None)])
def test_to_number(value, number):
  assert values.to_number(value) == number
