"""Reading teacher output: instruction lists, near-copies, evolved prompts, Orca final answers."""
from __future__ import annotations

import json

from bezoar.generate.evol_instruct import clean_evolution
from bezoar.generate.instruction_list import NearCopies, parse_instruction_list
from bezoar.generate.orca import gold_check, is_multiple_choice
from bezoar.generate.seeds import read_seeds


def test_numbered_bulleted_and_labelled_lists_inside_chatter():
    reply = """Here are 20 new instructions:

Directions
-  1. What is the name of the curvy street in San Francisco?
    Answer: Lombard Street
-  2. Which film from 1985 features a time-travelling DeLorean? Answer: Back to the Future
*3. **Write a haiku** about green tea.
(4) "Explain recursion to a child."
1.1.2: How do volcanoes form island chains?
Instruction 6: Name three rivers in Africa.
- Summarise the plot of Hamlet in two sentences.
I hope these help!"""
    assert parse_instruction_list(reply) == [
        "What is the name of the curvy street in San Francisco?",
        "Which film from 1985 features a time-travelling DeLorean?",
        "Write a haiku about green tea.",
        "Explain recursion to a child.",
        "How do volcanoes form island chains?",
        "Name three rivers in Africa.",
        "Summarise the plot of Hamlet in two sentences."]


def test_json_and_tagged_lists_and_no_list():
    fenced = '```json\n["List two uses of baking soda.", {"instruction": "Describe a sunset."}]\n```'
    assert parse_instruction_list(fenced) == ["List two uses of baking soda.", "Describe a sunset."]
    tagged = "<example>Tell me a joke about owls.</example>\n<example>Add 2 and 3.</example>"
    assert parse_instruction_list(tagged) == ["Tell me a joke about owls.", "Add 2 and 3."]
    assert parse_instruction_list("Once upon a time there was a camel who never drank water.") == []
    assert parse_instruction_list("1. Same thing.\n2. same thing.\n3. Other thing.") == ["Same thing.", "Other thing."]


def test_near_copies_of_real_seeds_are_found_and_new_ones_are_not(data_dir):
    seeds = read_seeds(data_dir / "seeds/dolly15k_open_qa_subset.jsonl").seeds
    near = NearCopies(0.7)
    for seed in seeds:
        near.add(seed.id, seed.instruction)
    hits = sum(near.match(s.instruction + " Please.") is not None for s in seeds[:200])
    assert hits >= 190  # LSH may miss a few; a reported match is always verified exactly
    assert near.match("Compose a limerick about a lighthouse keeper who collects teapots.") is None


def test_evolved_prompt_loses_an_echoed_leading_marker_only():
    assert clean_evolution("#Rewritten Prompt#: Name three rivers in Africa.") == "Name three rivers in Africa."
    assert clean_evolution('Created prompt: "Describe a rare orchid."') == "Describe a rare orchid."
    assert clean_evolution("Name rivers. #Given Prompt#") == "Name rivers. #Given Prompt#"


def test_gold_answers_are_found_in_real_cot_rationales(data_dir):
    """FLAN's own CoT rationales end with the gold answer; reading them must agree almost always."""
    seeds = read_seeds(data_dir / "seeds/flan/cot_data/gsm8k_train.tsv.gz", limit=200).seeds
    import gzip

    with gzip.open(data_dir / "seeds/flan/cot_data/gsm8k_train.tsv.gz", "rt", encoding="utf-8") as handle:
        rationales = [next(handle).rstrip("\n").split("\t")[2] for _ in range(200)]
    checks = [gold_check(s.target, r.replace("\\n", "\n")) for s, r in zip(seeds, rationales)]
    assert all(c["gold_short"] for c in checks)
    assert sum(c["agrees_with_gold"] for c in checks) >= 180
    wrong = gold_check(seeds[0].target, "Natalia sold 48 clips and then 12 more, so 60 in all.")
    assert wrong == {"gold_short": True, "agrees_with_gold": False, "extracted_answer": "60"}


def test_gold_check_for_letters_yes_no_and_long_targets(data_dir):
    aqua = read_seeds(data_dir / "seeds/flan/cot_data/aqua_train.tsv.gz", limit=1).seeds[0]
    assert is_multiple_choice(aqua.instruction) and aqua.target == "(C)"
    assert gold_check(aqua.target, "1/7:1/7:1/14 = 2:2:1, so A - C = 1120. The answer is (C).")["agrees_with_gold"] is True
    assert gold_check(aqua.target, "So the answer is (E).")["agrees_with_gold"] is False
    assert gold_check("yes", "Genghis Khan had many more children. So the answer is yes.")["agrees_with_gold"] is True
    dolly = json.loads(open(data_dir / "seeds/dolly15k_open_qa_subset.jsonl", encoding="utf-8").readline())
    assert gold_check(dolly["response"], "anything")["gold_short"] is False
