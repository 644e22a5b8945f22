"""goldfish_mask against references written from the definitions, in plain Python."""

from __future__ import annotations

import struct

import pytest
import torch
from transformers import DataCollatorForLanguageModeling, HfArgumentParser, default_data_collator

from hf_memory import GoldfishConfig, GoldfishDataCollator, GoldfishTrainingArguments, apply_goldfish, goldfish_mask
from hf_memory.goldfish import avalanche_hash, document_offsets


STRATEGIES = ["hash", "hash-table", "hash-avalanche", "static"]


# ---------------------------------------------------------------- references, one token at a time


def ref_offsets(positions: list[int]) -> list[int]:
    offsets, start = [], 0
    for i, p in enumerate(positions):
        if i == 0 or p == 0 or p != positions[i - 1] + 1:
            start = i
        offsets.append(i - start)
    return offsets


def wrap_int64(x: int) -> int:
    return (x + 2**63) % 2**64 - 2**63


_REF_TABLE = None


def ref_table() -> list[float]:
    global _REF_TABLE
    if _REF_TABLE is None:
        g = torch.Generator()
        g.manual_seed(2971215073)
        _REF_TABLE = torch.rand(1_000_003, generator=g).tolist()
    return _REF_TABLE


def ref_hash_key(window: list[int]) -> int:
    """The documented 'hash' strategy: a polynomial of the window mod 2**31-1, then an integer avalanche."""
    p = 2**31 - 1
    acc = 0
    for t in window:
        acc = (acc * (1_000_000_007 % p) + t % (p - 1) + 1) % p
    acc = ((acc ^ (acc >> 16)) * 0x45D9F3B) % p
    acc = ((acc ^ (acc >> 13)) * 0x2C1B3C6D) % p
    return acc ^ (acc >> 16)


def ref_avalanche(key: int) -> int:
    """The official `hashint(key, width=32)` as arithmetic on unsigned 64-bit integers (Python ints mod 2**64)."""
    m, mask = 2**64, 2**32 - 1
    key %= m
    key = ((~key) % m + (key << 21)) % m & mask
    key = ((key << 21) - key - 1) % m
    key = key ^ (key >> 24)
    key = ((key + (key << 3)) + (key << 8)) % m & mask
    key = key * 265 % m
    key = key ^ (key >> 14)
    key = ((key + (key << 2)) + (key << 4)) % m & mask
    key = key * 21 % m
    key = key ^ (key >> 28)
    return (key + (key << 31)) % m & mask


def as_float32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


def ref_mask(ids: list[int], config: GoldfishConfig, positions: list[int] | None = None) -> list[bool]:
    offsets = ref_offsets(positions) if positions is not None else list(range(len(ids)))
    threshold = torch.tensor(1 / config.k, dtype=torch.float32).item()  # torch compares in the table's float32
    drops = []
    for i, off in enumerate(offsets):
        if config.strategy == "static":
            drop = off >= 1 + config.start and (off - 1 - config.start) % config.k == 0
        elif off < config.h:
            drop = False
        else:
            window = ids[i - config.h + 1 : i + 1]
            if config.strategy == "hash-table":
                key = 1
                for t in window:
                    key = wrap_int64(key * t)
                drop = ref_table()[key % 1_000_003] < threshold
            elif config.strategy == "hash-avalanche":
                key = 1
                for t in window:
                    key = wrap_int64(key * t)
                # official: int64 hash < (2**32 - 1) / k, which torch evaluates in float32
                drop = as_float32(ref_avalanche(key)) < as_float32(((1 << 32) - 1) / config.k)
            else:
                drop = ref_hash_key(window) % config.k == 0
        drops.append(drop and ids[i] not in config.exempt_token_ids)
    return drops


# ---------------------------------------------------------------- each strategy against its definition


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("k,h,start", [(4, 13, 0), (2, 1, 3), (3, 5, 1)])
def test_matches_reference(strategy, k, h, start):
    gen = torch.Generator().manual_seed(k * 100 + h)
    ids = torch.randint(0, 50_000, (3, 150), generator=gen)
    ids[0, 40:60] = 0  # id 0 and id 1 inside windows
    ids[1, 70:75] = 1
    config = GoldfishConfig(k=k, h=h, strategy=strategy, start=start)
    mask = goldfish_mask(ids, config)
    assert mask.dtype == torch.bool and mask.shape == ids.shape
    for row in range(ids.shape[0]):
        assert mask[row].tolist() == ref_mask(ids[row].tolist(), config)


@pytest.mark.parametrize("strategy", ["hash-table", "hash-avalanche"])
def test_product_strategies_use_wrapping_int64_product(strategy):
    ids = torch.full((1, 40), 2**20 + 7)  # 13 such factors overflow int64 many times
    config = GoldfishConfig(k=2, h=13, strategy=strategy)
    assert goldfish_mask(ids, config)[0].tolist() == ref_mask(ids[0].tolist(), config)


def test_static_definition_by_hand():
    mask = goldfish_mask(torch.arange(20), GoldfishConfig(k=3, strategy="static", start=2))
    assert mask.nonzero().flatten().tolist() == [3, 6, 9, 12, 15, 18]


@pytest.mark.parametrize("strategy", ["hash", "hash-table", "hash-avalanche"])
def test_first_h_labels_are_never_dropped(strategy):
    ids = torch.randint(2, 50_000, (64, 40), generator=torch.Generator().manual_seed(1))
    mask = goldfish_mask(ids, GoldfishConfig(k=2, h=13, strategy=strategy))
    assert not mask[:, :13].any() and mask[:, 13:].any()


@pytest.mark.parametrize("strategy", ["hash", "hash-table", "hash-avalanche"])
def test_documents_shorter_than_h_drop_nothing(strategy):
    # The official code cannot unfold a window wider than the sequence and crashes; ours drops nothing.
    ids = torch.randint(2, 50_000, (8, 12), generator=torch.Generator().manual_seed(5))
    assert not goldfish_mask(ids, GoldfishConfig(k=2, h=13, strategy=strategy)).any()


def test_avalanche_hash_is_the_unsigned_64_bit_arithmetic():
    gen = torch.Generator().manual_seed(6)
    keys = torch.cat(
        [
            torch.tensor([0, 1, -1, 2**63 - 1, -(2**63), 2**32 - 1, 2**32]),
            torch.randint(-(2**63), 2**63 - 1, (20_000,), generator=gen),
            torch.randint(-5000, 5000, (2000,), generator=gen),
        ]
    )
    hashed = avalanche_hash(keys)
    assert hashed.dtype == torch.int64 and bool((hashed >= 0).all()) and bool((hashed < 2**32).all())
    assert hashed.tolist() == [ref_avalanche(k) for k in keys.tolist()]


def test_avalanche_threshold_is_compared_in_float32_like_torch():
    # Keys just under (2**32 - 1) / 4 round up to 2**30 in float32: the official comparison keeps them.
    config = GoldfishConfig(k=4, h=1, strategy="hash-avalanche")
    official = torch.tensor([1073741823, 1073741760, 1073741825]) < ((1 << 32) - 1) / config.k
    assert official.tolist() == [False, True, False]
    threshold = as_float32(((1 << 32) - 1) / config.k)
    assert [as_float32(float(x)) < threshold for x in (1073741823, 1073741760, 1073741825)] == official.tolist()


@pytest.mark.slow
def test_avalanche_matches_the_official_uint64_code_under_torch_compile():
    """The official `apply_goldfish(..., "hash-avalanche")`, as written, needs torch.compile for uint64 on a CPU."""

    def hashint(key, width=32):  # the official arithmetic, operator for operator, on torch.uint64
        mask = (1 << width) - 1
        key = (~key + (key << 21)) & mask
        key = (key << 21) - key - 1
        key = key ^ key >> 24
        key = ((key + (key << 3)) + (key << 8)) & mask
        key = key * 265
        key = key ^ key >> 14
        key = ((key + (key << 2)) + (key << 4)) & mask
        key = key * 21
        key = key ^ key >> 28
        return (key + (key << 31)) & mask

    ids = torch.randint(0, 50_000, (4, 200), generator=torch.Generator().manual_seed(7))
    ids[0, 50:70] = 0
    k, h = 4, 13
    targets = ids[:, 1:]  # official target j is our label j + 1
    keys = targets.unfold(1, h, 1).prod(dim=-1).to(dtype=torch.uint64)
    try:
        hashed = torch.compile(hashint)(keys).long()
    except Exception as error:  # no C compiler for inductor on this machine
        pytest.skip(f"torch.compile cannot run the official uint64 code here: {error}")
    official = torch.zeros_like(targets, dtype=torch.bool)
    official[:, h - 1 :] = hashed < ((1 << 32) - 1) / k
    ours = goldfish_mask(ids, GoldfishConfig(k=k, h=h, strategy="hash-avalanche"))
    assert torch.equal(ours[:, 1:], official) and not ours[:, 0].any()
    assert 0.15 < official.float().mean() < 0.3


def test_one_dimensional_input_matches_batched_row():
    ids = torch.randint(0, 1000, (2, 64), generator=torch.Generator().manual_seed(2))
    assert torch.equal(goldfish_mask(ids[1]), goldfish_mask(ids)[1])


# ---------------------------------------------------------------- what "hash" fixes in the product key


def test_hash_is_order_sensitive_and_sees_ids_zero_and_one():
    gen = torch.Generator().manual_seed(3)
    windows = torch.randint(2, 50_000, (4000, 13), generator=gen)
    rev = windows.flip(-1)
    with_zero = windows.clone()
    with_zero[:, 6] = 0
    with_one = windows.clone()
    with_one[:, 6] = 1
    config = GoldfishConfig(k=4, h=13, strategy="hash")
    table = GoldfishConfig(k=4, h=13, strategy="hash-table")

    def last(ids, cfg):
        return goldfish_mask(torch.cat([torch.full((ids.shape[0], 1), 5), ids], dim=1), cfg)[:, -1]

    # The product key ignores order, collapses every window holding a 0, and cannot see a 1.
    assert torch.equal(last(windows, table), last(rev, table))
    assert last(with_zero, table).unique().numel() == 1
    dropped_zero = last(with_zero, config).float().mean().item()
    assert 0.2 < dropped_zero < 0.3
    # The hash sees order and both ids.
    assert (last(windows, config) != last(rev, config)).float().mean() > 0.2
    assert (last(with_one, config) != last(windows, config)).float().mean() > 0.2


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("k", [3, 4, 8])
def test_drop_fraction_is_one_over_k(strategy, k):
    ids = torch.randint(0, 49_152, (10, 10_000), generator=torch.Generator().manual_seed(k))
    fraction = goldfish_mask(ids, GoldfishConfig(k=k, strategy=strategy)).float().mean().item()
    assert abs(fraction - 1 / k) < 0.01


# ---------------------------------------------------------------- documents, padding, exemptions


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_packed_batch_gets_each_documents_own_mask(strategy):
    gen = torch.Generator().manual_seed(4)
    lengths = [30, 5, 13, 14, 47]
    docs = [torch.randint(0, 30_000, (n,), generator=gen) for n in lengths]
    config = GoldfishConfig(k=3, h=13, strategy=strategy, start=1)
    packed = torch.cat(docs).unsqueeze(0)
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    mask = goldfish_mask(packed, config, position_ids=positions)[0]
    alone = torch.cat([goldfish_mask(doc, config) for doc in docs])
    assert torch.equal(mask, alone)
    assert mask.tolist() == ref_mask(packed[0].tolist(), config, positions[0].tolist())


def test_document_offsets_handle_padding_free_and_left_padding():
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 0], [-1, -1, 0, 1, 2, 3, 4]])
    assert document_offsets(positions).tolist() == [[0, 1, 2, 0, 1, 0, 0], [0, 0, 0, 1, 2, 3, 4]]


def test_exempt_tokens_are_never_dropped():
    ids = torch.randint(0, 20, (4, 500), generator=torch.Generator().manual_seed(5))
    for strategy in STRATEGIES:
        plain = goldfish_mask(ids, GoldfishConfig(k=2, h=2, strategy=strategy))
        exempt = goldfish_mask(ids, GoldfishConfig(k=2, h=2, strategy=strategy, exempt_token_ids=(3, 7)))
        special = (ids == 3) | (ids == 7)
        assert plain[special].any() and not exempt[special].any()
        assert torch.equal(exempt[~special], plain[~special])


def test_apply_goldfish_keeps_existing_ignored_labels():
    ids = torch.arange(1, 41).unsqueeze(0)
    labels = ids.clone()
    labels[0, :10] = -100
    config = GoldfishConfig(k=2, strategy="static")
    out = apply_goldfish(labels, ids, config)
    assert (out[0, :10] == -100).all()
    assert torch.equal(out == -100, (labels == -100) | goldfish_mask(ids, config))
    assert labels[0, 11] == 12  # the input is not modified


def test_collator_masks_left_padded_rows_like_unpadded(tokenizer):
    tokenizer.padding_side = "left"
    texts = ["Return the sum of a and b, or raise TypeError.", "Short text."]
    base = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    config = GoldfishConfig(k=3, h=2)
    batch = GoldfishDataCollator(base, config)([tokenizer(t) for t in texts])
    for row, text in enumerate(texts):
        ids = torch.tensor(tokenizer(text)["input_ids"])
        expected = ids.masked_fill(goldfish_mask(ids, config), -100)
        assert torch.equal(batch["labels"][row, -len(ids) :], expected)
        assert (batch["labels"][row, : -len(ids)] == -100).all()
    tokenizer.padding_side = "right"


def test_collator_reports_dropped_counts():
    features = [{"input_ids": list(range(10, 30)), "labels": [-100] * 5 + list(range(15, 30))}]
    config = GoldfishConfig(k=2, strategy="static")
    batch = GoldfishDataCollator(default_data_collator, config, return_dropped_counts=True)(features)
    newly = (batch["labels"] == -100).sum() - 5
    assert batch["goldfish_dropped_tokens"].tolist() == [newly.item()] and newly > 0


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"k": 1}, "`k`"),
        ({"k": 2.5}, "`k`"),
        ({"h": 0}, "`h`"),
        ({"strategy": "random"}, "`strategy`"),
        ({"start": -1}, "`start`"),
        ({"exempt_token_ids": ["eos"]}, "`exempt_token_ids`"),
    ],
)
def test_config_rejects_bad_values(kwargs, name):
    with pytest.raises(ValueError, match=name):
        GoldfishConfig(**kwargs)


def test_mask_rejects_non_integer_ids_and_bad_positions():
    with pytest.raises(ValueError, match="`input_ids` must hold integer"):
        goldfish_mask(torch.rand(2, 8))
    with pytest.raises(ValueError, match="`position_ids` must have the shape"):
        goldfish_mask(torch.ones(2, 8, dtype=torch.long), position_ids=torch.zeros(2, 7, dtype=torch.long))
    with pytest.raises(TypeError, match="`config`"):
        goldfish_mask(torch.ones(2, 8, dtype=torch.long), {"k": 4})


def test_collator_rejects_batches_without_labels_or_input_ids():
    config = GoldfishConfig()
    with pytest.raises(ValueError, match="no `labels`"):
        GoldfishDataCollator(default_data_collator, config)([{"input_ids": [1, 2, 3]}])
    with pytest.raises(ValueError, match="returned no `input_ids`"):
        GoldfishDataCollator(lambda f: {"inputs_embeds": torch.zeros(1, 3, 4)}, config)([{}])
    with pytest.raises(TypeError, match="`base_collator`"):
        GoldfishDataCollator("not a collator", config)


# ---------------------------------------------------------------- training arguments


def test_training_arguments_parse_from_command_line(tmp_path):
    (args,) = HfArgumentParser(GoldfishTrainingArguments).parse_args_into_dataclasses(
        [
            "--output_dir",
            str(tmp_path),
            "--goldfish_k",
            "8",
            "--goldfish_h",
            "7",
            "--goldfish_strategy",
            "static",
            "--goldfish_start",
            "2",
            "--goldfish_exempt_special_tokens",
            "false",
        ]
    )
    assert (args.goldfish_k, args.goldfish_h, args.goldfish_strategy, args.goldfish_start) == (8, 7, "static", 2)
    assert args.goldfish_exempt_special_tokens is False
    assert args.to_goldfish_config((5,)) == GoldfishConfig(k=8, h=7, strategy="static", start=2, exempt_token_ids=(5,))


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"goldfish_k": 1}, "goldfish_k"),
        ({"goldfish_h": 0}, "goldfish_h"),
        ({"goldfish_strategy": "bogus"}, "goldfish_strategy"),
        ({"goldfish_start": -2}, "goldfish_start"),
    ],
)
def test_training_arguments_name_the_bad_argument(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        GoldfishTrainingArguments(output_dir=str(tmp_path), **kwargs)


# ---------------------------------------------------------------- regressions of the first hostile trial (issue 11)


def test_apply_goldfish_refuses_mismatched_shapes():
    ids = torch.arange(40)
    with pytest.raises(ValueError, match=r"`labels` \(4, 40\) and `input_ids` \(40,\) must have the same shape"):
        apply_goldfish(ids.repeat(4, 1), ids, GoldfishConfig(k=2, strategy="static"))


def test_collator_warns_once_about_documents_too_short_to_drop():
    from transformers.testing_utils import CaptureLogger

    from hf_memory.goldfish import collator as collator_module

    config = GoldfishConfig(k=4, h=13)
    long_doc, short_doc = list(range(100, 140)), list(range(200, 212))  # 12 tokens: no label has 13 targets before it
    features = [
        {"input_ids": row + [0] * (40 - len(row)), "attention_mask": [1] * len(row) + [0] * (40 - len(row))}
        for row in (long_doc, short_doc)
    ]
    for feature in features:
        feature["labels"] = [t if m else -100 for t, m in zip(feature["input_ids"], feature["attention_mask"])]
    collator = GoldfishDataCollator(default_data_collator, config)
    with CaptureLogger(collator_module.logger) as captured:
        batch = collator(features)
    assert "1 of the 2 documents" in captured.out and "`h` = 13" in captured.out
    assert (batch["labels"][1, :12] != -100).all()  # the short document indeed kept every label
    with CaptureLogger(collator_module.logger) as captured:
        collator(features)
    assert captured.out == ""  # once per collator
    # long documents only (and packed ones, each longer than h): no warning
    packed = {"input_ids": long_doc + long_doc[:20], "labels": long_doc + long_doc[:20]}
    packed["position_ids"] = list(range(40)) + list(range(20))
    with CaptureLogger(collator_module.logger) as captured:
        GoldfishDataCollator(default_data_collator, config)([{k: v[:40] for k, v in packed.items()}])
        GoldfishDataCollator(default_data_collator, config)([packed])
    assert captured.out == ""
    # a packed row whose second document is short is caught through its position_ids
    packed["position_ids"] = list(range(50)) + list(range(10))
    with CaptureLogger(collator_module.logger) as captured:
        GoldfishDataCollator(default_data_collator, config)([packed])
    assert "1 of the 2 documents" in captured.out
    # "static" reaches every label after `start`: a 12-token document is reached
    with CaptureLogger(collator_module.logger) as captured:
        GoldfishDataCollator(default_data_collator, GoldfishConfig(k=4, strategy="static"))(features)
    assert captured.out == ""


def test_static_strategy_short_document_warning_names_start():
    from transformers.testing_utils import CaptureLogger

    from hf_memory.goldfish import collator as collator_module

    config = GoldfishConfig(k=2, strategy="static", start=5)
    features = [{"input_ids": [7, 8, 9, 10, 11], "labels": [7, 8, 9, 10, 11]}]  # offsets 0..4: all <= start
    with CaptureLogger(collator_module.logger) as captured:
        batch = GoldfishDataCollator(default_data_collator, config)(features)
    assert "`start` = 5" in captured.out and "Lower `start`" in captured.out
    assert (batch["labels"] != -100).all()
