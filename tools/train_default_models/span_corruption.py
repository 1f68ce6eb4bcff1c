"""T5's span-corruption objective (Raffel et al. 2020, section 3.1.4), on one token sequence.

About 15% of the tokens are dropped in spans of mean length 3. Each dropped span becomes one sentinel in the
input; the target lists each sentinel followed by the tokens it hides, and ends with one more sentinel and </s>:
  text   : In the beginning God created the heaven and the earth .
  input  : In the beginning God <extra_id_0> the heaven and the earth . </s>
  target : <extra_id_0> created <extra_id_1> </s>
"""
import random


def _random_partition(rng: random.Random, total: int, parts: int) -> list[int]:
    """`total` split into `parts` positive integers, uniformly over all such splits."""
    cuts = sorted(rng.sample(range(1, total), parts - 1))
    return [b - a for a, b in zip([0, *cuts], [*cuts, total])]


def noise_mask(n: int, rng: random.Random, noise_density: float = 0.15, mean_span: float = 3.0) -> list[bool]:
    """Which of n tokens to drop: alternating kept and noise spans, then rolled by a random offset (T5's
    `random_roll`) so that the noise is not always at the end of the sequence."""
    if n < 2:
        raise ValueError("span corruption needs at least 2 tokens")
    num_noise = min(max(round(n * noise_density), 1), n - 1)
    num_spans = min(max(round(num_noise / mean_span), 1), num_noise, n - num_noise)
    mask: list[bool] = []
    for keep, noise in zip(_random_partition(rng, n - num_noise, num_spans),
                           _random_partition(rng, num_noise, num_spans)):
        mask += [False] * keep + [True] * noise
    offset = rng.randrange(n)
    return mask[offset:] + mask[:offset]


def corrupt(tokens: list[int], rng: random.Random, sentinel0: int, eos: int, noise_density: float = 0.15,
            mean_span: float = 3.0) -> tuple[list[int], list[int]]:
    """Returns (input_ids, labels) for one example; sentinel k is id sentinel0 - k (T5's <extra_id_k>)."""
    mask = noise_mask(len(tokens), rng, noise_density, mean_span)
    inputs: list[int] = []
    labels: list[int] = []
    sentinel = sentinel0
    for i, (token, noise) in enumerate(zip(tokens, mask)):
        if not noise:
            inputs.append(token)
            continue
        if i == 0 or not mask[i - 1]:  # a new noise span: one sentinel stands for all of it
            inputs.append(sentinel)
            labels.append(sentinel)
            sentinel -= 1
        labels.append(token)
    labels.append(sentinel)  # T5's targets end with one more sentinel
    return inputs + [eos], labels + [eos]
