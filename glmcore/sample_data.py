"""A deterministic AdvertiseGen-form sample: synthetic clothing attribute lists and the ad copy they call for.

The demo and the tests need data in the real AdvertiseGen form (``{"content": "类型#上衣*材质#牛仔布*...",
"summary": "..."}``, JSON lines) without downloading it. The copy is built from vocabulary tables so that it is a
learnable function of the attributes: every attribute value appears in the copy, inside a phrase drawn from a
few templates and a few selling points that belong to that value. Clause order, templates and selling points are
drawn from a seeded ``random.Random``, so the same seed always gives the same bytes.

``ad_copy_corpus`` gives copy in the same style without the attribute lists: the demo model is pretrained on it as
a plain language model, so that a P-tuning prefix still has the attributes-to-copy mapping to learn.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from glmcore.errors import GlmError

DEFAULT_TRAIN_COUNT = 2000
DEFAULT_DEV_COUNT = 100


class SampleDataError(GlmError):
    """Raised for sample sizes that cannot be produced."""


@dataclass(frozen=True)
class Attribute:
    """One AdvertiseGen key: its values, each with selling points, and the clause templates that use them.

    A template has ``{v}`` for the value and ``{e}`` for one of the value's selling points.
    """

    key: str
    selling_points: dict[str, tuple[str, ...]]
    templates: tuple[str, ...]

    @property
    def values(self) -> tuple[str, ...]:
        return tuple(self.selling_points)


@dataclass(frozen=True)
class GarmentType:
    """A 类型 value: the key naming the garment (its noun in the copy), its measure word and its own keys."""

    name: str
    noun_key: str
    nouns: tuple[str, ...]
    measure_word: str
    attributes: tuple[Attribute, ...]
    closings: tuple[str, ...]


_FIT = Attribute(
    "版型",
    {
        "宽松": ("包容性强，遮肉又舒适", "慵懒随性不挑身材"),
        "修身": ("勾勒出优美的身材曲线", "利落有型更显精神"),
        "直筒": ("线条简洁利落", "轻松修饰身形"),
    },
    ("{v}的版型{e}", "采用{v}版型，{e}"),
)
_MATERIAL = Attribute(
    "材质",
    {
        "牛仔布": ("耐磨耐穿", "挺括有型"),
        "纯棉": ("柔软亲肤", "透气吸汗"),
        "雪纺": ("轻盈飘逸", "清爽透气"),
        "针织": ("柔软有弹性", "温暖舒适"),
        "蕾丝": ("精致浪漫", "优雅迷人"),
        "网纱": ("朦胧唯美", "轻盈灵动"),
        "丝绒": ("光泽华丽", "复古高级"),
        "羊毛": ("保暖又柔软", "细腻有质感"),
        "亚麻": ("自然透气", "清爽随性"),
    },
    ("采用{v}面料，{e}", "选用{v}材质，{e}", "{v}面料{e}"),
)
_COLOUR = Attribute(
    "颜色",
    {
        "白色": ("干净清爽", "百搭又耐看"),
        "黑色": ("低调显瘦", "经典又酷感十足"),
        "红色": ("热情显白", "明艳吸睛"),
        "蓝色": ("清新沉静", "清爽宜人"),
        "粉色": ("甜美温柔", "少女感满满"),
        "卡其色": ("温暖有质感", "复古又文艺"),
        "灰色": ("高级耐看", "沉稳知性"),
        "绿色": ("清新自然", "充满生机"),
        "黄色": ("明亮活泼", "元气满满"),
    },
    ("{v}的色调{e}", "一抹{v}{e}", "{v}配色{e}"),
)
_STYLE = Attribute(
    "风格",
    {
        "简约": ("简约而不简单", "低调中透着高级感"),
        "复古": ("复古韵味十足", "带着浓浓的年代感"),
        "文艺": ("文艺气息浓郁", "尽显知性气质"),
        "性感": ("性感撩人", "散发女人味"),
        "街头": ("酷感十足", "潮流又个性"),
        "清新": ("清新自然", "充满青春活力"),
        "休闲": ("轻松自在", "舒适随性"),
        "通勤": ("干练大方", "从容出入职场"),
        "甜美": ("甜美可人", "俏皮减龄"),
    },
    ("整体走{v}风格，{e}", "{v}的风格{e}", "打造{v}格调，{e}"),
)
_PATTERN = Attribute(
    "图案",
    {
        "刺绣": ("精致有质感", "增添细节看点"),
        "条纹": ("经典又有层次", "视觉上更显瘦"),
        "格子": ("复古又学院", "层次丰富"),
        "印花": ("活泼吸睛", "充满艺术感"),
        "碎花": ("浪漫清新", "温柔有女人味"),
        "字母": ("潮流个性", "年轻有活力"),
        "纯色": ("干净简洁", "好搭不出错"),
        "波点": ("俏皮可爱", "复古又灵动"),
    },
    ("点缀{v}图案，{e}", "{v}元素{e}", "{v}的设计{e}"),
)

_DETAIL_TEMPLATES = ("{v}设计{e}", "采用{v}的设计，{e}", "加入{v}细节，{e}")

_TOP = GarmentType(
    name="上衣",
    noun_key="衣样式",
    nouns=("外套", "衬衫", "T恤", "卫衣", "毛衣", "风衣", "西装"),
    measure_word="件",
    attributes=(
        Attribute(
            "衣领型",
            {
                "圆领": ("修饰颈部线条", "简洁大方"),
                "翻领": ("干练有型", "利落帅气"),
                "v领": ("拉长颈部线条", "显脸小"),
                "立领": ("挺括有精神", "气场十足"),
                "连帽": ("休闲减龄", "防风又保暖"),
            },
            _DETAIL_TEMPLATES,
        ),
        Attribute(
            "衣袖长",
            {
                "长袖": ("包裹手臂更有安全感", "适合早晚温差大的季节"),
                "短袖": ("清凉舒爽", "露出手臂更显利落"),
                "七分袖": ("露出纤细手腕", "恰到好处不拖沓"),
            },
            ("{v}的长度{e}", "{v}设计{e}"),
        ),
        Attribute(
            "衣款式",
            {
                "破洞": ("打破单调乏味", "随性又有个性"),
                "口袋": ("实用又美观", "增添层次感"),
                "拼接": ("丰富视觉层次", "打破沉闷"),
                "纽扣": ("精致有细节", "穿脱方便"),
                "荷叶边": ("灵动俏皮", "增添女人味"),
                "拉链": ("开合方便", "利落又帅气"),
            },
            _DETAIL_TEMPLATES,
        ),
    ),
    closings=("搭配牛仔裤或半身裙都很好看", "是衣橱里不可或缺的单品", "日常出街轻松驾驭"),
)
_TROUSERS = GarmentType(
    name="裤",
    noun_key="裤型",
    nouns=("阔腿裤", "直筒裤", "哈伦裤", "铅笔裤", "工装裤", "背带裤"),
    measure_word="条",
    attributes=(
        Attribute(
            "裤长",
            {
                "九分裤": ("露出纤细脚踝", "显高又利落"),
                "七分裤": ("清爽不拖沓", "适合夏日穿着"),
                "长裤": ("修饰腿型", "拉长腿部比例"),
            },
            ("{v}的长度{e}", "{v}设计{e}"),
        ),
        Attribute(
            "裤腰型",
            {
                "高腰": ("拉长腿部线条", "显高又显瘦"),
                "松紧腰": ("穿着无束缚", "适合不同腰围"),
                "中腰": ("舒适不勒", "百搭日常"),
            },
            _DETAIL_TEMPLATES,
        ),
        Attribute(
            "裤款式",
            {
                "破洞": ("打破单调乏味", "随性又有个性"),
                "口袋": ("实用又美观", "增添层次感"),
                "抽绳": ("松紧可调", "休闲感十足"),
                "不规则": ("个性十足", "充满设计感"),
                "拉链": ("开合方便", "利落又帅气"),
            },
            _DETAIL_TEMPLATES,
        ),
    ),
    closings=("搭配T恤或衬衫都很出彩", "轻松穿出大长腿", "一年四季都能穿"),
)
_SKIRT = GarmentType(
    name="裙",
    noun_key="裙型",
    nouns=("a字裙", "百褶裙", "包臀裙", "连衣裙", "半身裙", "吊带裙"),
    measure_word="条",
    attributes=(
        Attribute(
            "裙长",
            {
                "中长裙": ("优雅又端庄", "遮住大腿更显瘦"),
                "短裙": ("俏皮减龄", "露出双腿显高挑"),
                "长裙": ("飘逸灵动", "仙气十足"),
            },
            ("{v}的长度{e}", "{v}设计{e}"),
        ),
        Attribute(
            "裙领型",
            {
                "圆领": ("修饰颈部线条", "简洁大方"),
                "v领": ("拉长颈部线条", "显脸小"),
                "方领": ("展现锁骨美", "复古优雅"),
                "一字领": ("露出香肩", "性感迷人"),
            },
            _DETAIL_TEMPLATES,
        ),
        Attribute(
            "裙款式",
            {
                "荷叶边": ("灵动俏皮", "增添女人味"),
                "系带": ("收腰显瘦", "随性又浪漫"),
                "拼接": ("丰富视觉层次", "打破沉闷"),
                "开叉": ("行走间若隐若现", "方便又性感"),
                "木耳边": ("甜美精致", "减龄可爱"),
            },
            _DETAIL_TEMPLATES,
        ),
    ),
    closings=("搭配小白鞋或高跟鞋都很好看", "约会出游都很合适", "轻松穿出好气质"),
)

GARMENT_TYPES: tuple[GarmentType, ...] = (_TOP, _TROUSERS, _SKIRT)
SHARED_ATTRIBUTES: tuple[Attribute, ...] = (_FIT, _MATERIAL, _COLOUR, _STYLE, _PATTERN)
"""Keys every garment type may have, in the order the content string lists them (before the type's own keys)."""

_OPENINGS = ("这款{noun}", "这{m}{noun}", "今季大热的{noun}", "一{m}时髦的{noun}")
_GENERIC_CLOSINGS = ("穿出自己的时尚态度", "让你轻松成为人群中的焦点")
_ATTRIBUTE_CHANCE = 0.6
_MIN_ATTRIBUTES = 2
"""Attributes besides 类型 and the noun, so every copy has something to say."""


def vocabulary(key: str) -> Attribute:
    """The vocabulary of ``key`` (e.g. "材质"), for code that checks the copy against the attributes."""
    for candidate in SHARED_ATTRIBUTES + tuple(a for garment in GARMENT_TYPES for a in garment.attributes):
        if candidate.key == key:
            return candidate
    raise KeyError(key)


def parse_content(content: str) -> list[tuple[str, str]]:
    """Split an AdvertiseGen content string into its (key, value) pairs, in order."""
    pairs = []
    for item in content.split("*"):
        key, _, value = item.partition("#")
        pairs.append((key, value))
    return pairs


def _clause(rng: random.Random, attribute: Attribute, value: str) -> str:
    template = rng.choice(attribute.templates)
    return template.format(v=value, e=rng.choice(attribute.selling_points[value]))


def _example(rng: random.Random) -> dict[str, str]:
    garment = rng.choice(GARMENT_TYPES)
    noun = rng.choice(garment.nouns)
    candidates = SHARED_ATTRIBUTES + garment.attributes
    chosen = [a for a in candidates if rng.random() < _ATTRIBUTE_CHANCE]
    while len(chosen) < _MIN_ATTRIBUTES:  # keep the content order: add the extra one where it belongs
        extra = rng.choice([a for a in candidates if a not in chosen])
        chosen = [a for a in candidates if a in chosen or a is extra]
    values = [(a, rng.choice(a.values)) for a in chosen]

    shared = [(a.key, v) for a, v in values if a in SHARED_ATTRIBUTES]
    own = [(a.key, v) for a, v in values if a not in SHARED_ATTRIBUTES]
    pairs = [("类型", garment.name), *shared, (garment.noun_key, noun), *own]
    content = "*".join(f"{key}#{value}" for key, value in pairs)

    clauses = [_clause(rng, a, v) for a, v in values]
    rng.shuffle(clauses)
    opening = rng.choice(_OPENINGS).format(noun=noun, m=garment.measure_word)
    closing = rng.choice(garment.closings + _GENERIC_CLOSINGS)
    sentences = [f"{opening}，{clauses[0]}"]
    rest = [*clauses[1:], closing]
    for start in range(0, len(rest), 2):
        sentences.append("，".join(rest[start : start + 2]))
    return {"content": content, "summary": "。".join(sentences) + "。"}


def _unique_examples(rng: random.Random, count: int) -> list[dict[str, str]]:
    """``count`` examples with pairwise different content strings."""
    if count < 1:
        raise SampleDataError(f"Cannot make a sample of {count} examples: ask for at least 1.")
    seen: set[str] = set()
    examples = []
    while len(examples) < count:
        example = _example(rng)
        if example["content"] not in seen:
            seen.add(example["content"])
            examples.append(example)
    return examples


def generate_examples(count: int, *, seed: int) -> list[dict[str, str]]:
    """``count`` AdvertiseGen-form examples with distinct attribute lists; the same seed gives the same list."""
    return _unique_examples(random.Random(seed), count)


def ad_copy_corpus(count: int, seed: int) -> list[str]:
    """Ad copy alone, in the sample's style, for pretraining the demo model as a plain language model.

    Drawn from a random stream of its own, so the texts are not the summaries of ``generate_examples(seed)``.
    """
    return [
        example["summary"] for example in _unique_examples(random.Random(f"ad-copy-corpus/{seed}"), count)
    ]


def _write_json_lines(path: Path, examples: list[dict[str, str]]) -> None:
    """Write one JSON object per line, not ASCII-escaped (as AdvertiseGen ships), replacing ``path`` whole."""
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8", newline="\n") as file:
        for example in examples:
            file.write(json.dumps(example, ensure_ascii=False) + "\n")
        file.flush()
        os.fsync(file.fileno())
    partial.replace(path)


def write_sample_dataset(
    directory: str | Path,
    *,
    train_count: int = DEFAULT_TRAIN_COUNT,
    dev_count: int = DEFAULT_DEV_COUNT,
    seed: int = 0,
) -> tuple[Path, Path]:
    """Write ``train.json`` and ``dev.json`` (JSON lines) into ``directory``; no content is in both splits."""
    if train_count < 1 or dev_count < 1:
        raise SampleDataError(
            f"Cannot make a sample with {train_count} training and {dev_count} validation examples: "
            "both splits need at least 1."
        )
    examples = generate_examples(train_count + dev_count, seed=seed)
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    train_path, dev_path = target / "train.json", target / "dev.json"
    _write_json_lines(train_path, examples[:train_count])
    _write_json_lines(dev_path, examples[train_count:])
    return train_path, dev_path
