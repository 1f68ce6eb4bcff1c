"""The shared tokenizer parity corpus: strings that stress pre-tokenizers, BPE/Unigram models and byte handling.

CORPUS: >= 200 valid Unicode strings (English, whitespace runs, contractions in odd cases, numbers, punctuation,
accents and combining marks, CJK, Arabic, Hindi, emoji with ZWJ sequences and flags, code, URLs, very long words,
control characters, one ~20k-character text, and added tokens written in the text).
INVALID_UTF8: raw byte strings that are not valid UTF-8. Kestrel's policy is to read them the way Python's
bytes.decode("utf-8", errors="replace") does, so the tests compare against transformers on that decoded text.
"""
import random

ENGLISH = [
    "Hello world",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "It was the best of times, it was the worst of times.",
    "In 1492, Columbus sailed the ocean blue.",
    "She sells sea-shells by the sea-shore.",
    "A journey of a thousand miles begins with a single step.",
    "To be, or not to be: that is the question.",
    "E-mail me at someone@example.com before 5 p.m.",
    "Mr. and Mrs. Dursley, of number four, Privet Drive, were proud to say that they were perfectly normal.",
    "hello",
    "HELLO",
    "hElLo WoRlD",
    "a",
    "I",
    ".",
    "Supercalifragilisticexpialidocious",
    "antidisestablishmentarianism",
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    "The U.S.A. is a country; the U.K. is another.",
    "Wait... what?!",
    "(parenthetical) [bracketed] {braced} <angled>",
    "\"Quoted,\" she said, 'single-quoted.'",
    "Tom's cat isn't Tim's dog.",
]

WHITESPACE = [
    "",
    " ",
    "  ",
    "     ",
    "\t",
    "\t\t\t",
    "\n",
    "\n\n\n",
    "\r\n",
    "\r\n\r\n",
    " \n ",
    "a  b",
    "a   b    c",
    "a\tb",
    "a \t b",
    "a\n\nb",
    "line one\nline two\n",
    "trailing spaces   ",
    "   leading spaces",
    "  both sides  ",
    "tab\tseparated\tvalues\t",
    "mixed \t\n \r\n whitespace",
    "end with newline\n",
    "word \n",
    " \t\n\r\x0b\x0c",
    "a\x0bb\x0cc",
    "nbsp\u00a0between\u00a0\u00a0words",
    "ideographic\u3000space",
    "em\u2003space and thin\u2009space",
    "line\u2028separator\u2029paragraph",
    "next\u0085line\u0085\u0085!",
    " \u0085 ",
]

CONTRACTIONS = [
    "I'm here",
    "you're right",
    "he's gone",
    "we've seen",
    "I'll go",
    "I'd say",
    "can't won't don't",
    "I'M HERE",
    "YOU'RE RIGHT",
    "HE'S GONE",
    "WE'VE SEEN",
    "I'LL GO",
    "I'D SAY",
    "It'S mIxEd'Ve",
    "'s",
    "'t",
    "'re",
    "'ve",
    "'m",
    "'ll",
    "'d",
    "''",
    "' s",
    "'''s",
    "rock 'n' roll",
    "the '90s",
    "o'clock",
    "y'all'd've",
    "l'homme d'affaires",
    "it\u2019s curly",
    "'sss'tt're've'm'll'd",
]

NUMBERS = [
    "0",
    "42",
    "123456789",
    "3.14159265358979",
    "1,000,000",
    "-17.5e+10",
    "0x1F 0b1010 0o777",
    "2024-01-31T12:34:56Z",
    "$1,234.56 and \u20ac99,99",
    "100%",
    "1st 2nd 3rd 4th",
    "\u00bd \u00bc \u00be",
    "x\u00b2 + y\u00b3",
    "\u0661\u0662\u0663 \u0664\u0665\u0666",
    "\u0967\u0968\u0969",
    "\u2160 \u2161 \u2162 \u216b",
    "\u2460\u2461\u2462",
    "12abc34def",
    "phone: +1 (555) 123-4567",
]

PUNCTUATION = [
    "!!!",
    "???",
    "...",
    "!?!?",
    "a,b;c:d",
    "--- *** ___",
    "@#$%^&*()",
    "~`|\\/",
    "\u00bfQu\u00e9? \u00a1S\u00ed!",
    "\u00ab guillemets \u00bb",
    "\u201ccurly quotes\u201d",
    "em\u2014dash en\u2013dash",
    "\u2026 ellipsis",
    " !",
    " .",
    "word.",
    "a . b , c",
]

ACCENTS = [
    "caf\u00e9",
    "na\u00efve r\u00e9sum\u00e9",
    "Stra\u00dfe",
    "\u00c5ngstr\u00f6m",
    "cafe\u0301",
    "a\u0300\u0301\u0302\u0303\u0304",
    "Z\u0351\u036b\u0343a\u0311\u0308l\u0357g\u0350o\u0335",
    "\u0131stanbul \u0130STANBUL",
    "\u0e01\u0e34\u0e19\u0e02\u0e49\u0e32\u0e27",
    "Ελληνικά γράμματα",
    "Русский текст, ёжик.",
    "Українська мова",
    "Ç'est très bien",
    "ﬁ ligature ﬀ",
]

SCRIPTS = [
    "中文字符",
    "你好，世界！",
    "こんにちは世界",
    "カタカナとひらがな",
    "안녕하세요 세계",
    "مرحبا بالعالم",
    "العربية: ١٢٣",
    "שלום עולם",
    "नमस्ते दुनिया",
    "हिन्दी में लिखा गया वाक्य।",
    "தமிழ் எழுத்து",
    "ქართული",
    "አማርኛ",
    "ᚠᛇᚻ᛫ᛒᛦᚦ",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕄𝕒𝕥𝕙",
    "mixed English 中文 and العربية and हिन्दी",
    "日本語のテキスト、句読点。",
    "한국어와 English 혼합",
]

EMOJI = [
    "😀",
    "😀😃😄",
    "I love 🍕!",
    "👍🏽",
    "👨\u200d👩\u200d👧\u200d👦",
    "🏳\ufe0f\u200d🌈",
    "🇺🇸🇬🇧🇯🇵",
    "🇺",
    "❤\ufe0f",
    "☺",
    "🧑🏿\u200d🚀 astronaut",
    "emoji🎉inside🎉words",
    "#\ufe0f\u20e3 1\ufe0f\u20e3",
    "🫠🫡",
]

CODE = [
    "def f(x):\n    return x ** 2\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
    "#include <stdio.h>\nint main(void) { printf(\"hi\\n\"); }",
    "SELECT * FROM users WHERE id = 42;",
    '{"key": [1, 2, 3], "nested": {"a": null}}',
    "<div class=\"x\">Hello</div>",
    "x = lambda a, b: a if a > b else b",
    "    indented four\n        indented eight",
    "if __name__ == '__main__':\n    main()",
    "const std::vector<int64_t>& ids",
    "a && b || !c",
    "i++; j--; k += 1;",
    "$ ls -la | grep '.txt' > out.log 2>&1",
    "// comment\n/* block */",
    "snake_case camelCase PascalCase kebab-case SCREAMING_CASE",
    "fn main() -> Result<(), Box<dyn Error>> { Ok(()) }",
]

URLS = [
    "https://www.example.com/path/to/page?query=1&other=two#anchor",
    "http://localhost:8080/",
    "ftp://files.example.org/pub/file.tar.gz",
    "mailto:someone@example.com",
    "https://en.wikipedia.org/wiki/Byte_pair_encoding",
    "www.example.co.uk/index.html",
    "https://例え.jp/パス",
]

CONTROL = [
    "\x00",
    "a\x00b",
    "\x01\x02\x03",
    "\x7f",
    "\x1b[31mred\x1b[0m",
    "bell\x07",
    "\x1c\x1d\x1e\x1f",
    "zero\u200bwidth",
    "\ufeffBOM at start",
    "soft\u00adhyphen",
    "rtl\u200fmark\u200e",
    "\ufffd replacement",
    "private \ue000 use",
    "noncharacter \ufdd0",
    "astral \U0010fffd",
]

ADDED_TOKENS = [
    "<|endoftext|>",
    "Hello<|endoftext|>",
    "<|endoftext|>Hello",
    "a <|endoftext|> b",
    "<|endoftext|><|endoftext|>",
    "<|endoftext|> <|endoftext|>",
    "<|endoftext",
    "endoftext|>",
    "<|endoftext|>\n<|endoftext|>\n",
    "x<|endoftext|>y<|endoftext|>z",
    "<|endoftext|>!!",
    "  <|endoftext|>  ",
]

LONG = [
    "a" * 1000,
    "ab" * 700,
    "z" * 5000,
    "supercalifragilistic" * 50,
    " " * 300,
    "\n" * 100,
    "!" * 500,
    "1234567890" * 100,
    "😀" * 200,
    "中" * 500,
    "x" + "\u0301" * 300,
    "https://example.com/" + "a/b-c_d" * 100,
    "aGVsbG8gd29ybGQ=" * 40,
]


def _long_text() -> str:
    """About 20k characters of mixed prose, code and scripts, fixed by a seed."""
    rng = random.Random(20240131)
    pool = ENGLISH + CONTRACTIONS + NUMBERS + PUNCTUATION + ACCENTS + SCRIPTS + EMOJI + CODE + URLS
    parts, size = [], 0
    while size < 20000:
        piece = rng.choice(pool)
        parts.append(piece)
        parts.append(rng.choice([" ", "  ", "\n", "\t", " \n", ""]))
        size += len(piece) + 1
    return "".join(parts)


def _random_mixtures(count: int) -> list:
    """Short random mixtures of characters from every class above, to reach the corners the lists miss."""
    rng = random.Random(7)
    alphabet = list("abcXYZ019'sdtlmrev .,!?-_/\\\"\t\n\r ") + list(
        "\u00e9\u0301\u4e2d\u0645\u0928\u0947\U0001f600\u200d\U0001f1fa\u00a0\u3000\u0085\x00\x1f\u2028\u00bd\u0661"
    )
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30))) for _ in range(count)]


CORPUS = (
    ENGLISH
    + WHITESPACE
    + CONTRACTIONS
    + NUMBERS
    + PUNCTUATION
    + ACCENTS
    + SCRIPTS
    + EMOJI
    + CODE
    + URLS
    + CONTROL
    + ADDED_TOKENS
    + LONG
    + [_long_text()]
    + _random_mixtures(60)
)

INVALID_UTF8 = [
    b"\xff",
    b"abc\xffdef",
    b"\xc3",
    b"caf\xc3",
    b"\xc3\x28",
    b"\xe2\x82",
    b"\xe2\x82\x28",
    b"\xed\xa0\x80",
    b"\xc0\xaf",
    b"\xf0\x9f\x98",
    b"\xf0\x9f\x98 x",
    b"\xf4\x90\x80\x80",
    b"\x80\x80\x80",
    b"\xfe\xfe\xff\xff",
    b"ok \xe4\xb8 broken \xe4\xb8\xad ok",
    b"<|endoftext|>\xff<|endoftext|>",
]

assert len(CORPUS) >= 200, len(CORPUS)
