"""momos's rANS coder against constriction's, an independent implementation, as an oracle.

The two streams are not comparable byte for byte (constriction codes 32-bit words from a 64-bit
state in one lane; momos 16-bit words from 32-bit states in ``lanes_for(n)`` lanes), but their
lengths are: coding the same symbols with the same frequency table, each costs the symbols'
information content ``sum -log2(f_s / 2**16)`` plus a small constant. constriction's constant
is a few dozen bits; momos's is its stored final states, 32 bits a lane, less the 16 bits of
each lane's initial state ``LOW``, so between 16 and 32 bits a lane. A coder that wastes bits
(a wrong renormalization bound, a frequency off by one, a lost word) falls outside that window.
"""

import numpy as np
import pytest

from momos.fileformat import rans

constriction = pytest.importorskip("constriction")


def symbols_and_frequencies(k, n, alpha, seed, rare=0):
    """``n`` symbols: symbols ``k - rare`` to ``k - 1`` once each, in random places, the others
    drawn from a Dirichlet(``alpha``) distribution; and their frequency table."""
    rng = np.random.default_rng(seed)
    common = rng.choice(k - rare, size=n - rare, p=rng.dirichlet(np.full(k - rare, alpha)))
    symbols = rng.permutation(np.concatenate([common, np.arange(k - rare, k)]))
    return symbols, rans.quantize_frequencies(np.bincount(symbols, minlength=k))


@pytest.mark.parametrize("k,n,alpha,rare", [
    (2, 1000, 1.0, 0),           # one lane
    (2, 100_000, 0.05, 0),       # nearly constant: far below a bit per symbol
    (3, 200_000, 0.05, 1),       # a symbol of frequency 1 next to one of almost 2**16
    (50, 200_000, 0.5, 0),
    (300, 5000, 0.3, 20),        # four lanes, rare symbols
    (4096, 300_000, 0.2, 50),
    (65536, 200_000, 1.0, 0),    # the largest alphabet a stream codes
])
def test_rans_costs_what_constriction_costs(k, n, alpha, rare):
    symbols, freqs = symbols_and_frequencies(k, n, alpha, seed=k + n, rare=rare)
    assert (freqs[k - rare:] == max(1, round(rans.TOTAL / n))).all()

    states, words = rans.encode(symbols, freqs)
    assert np.array_equal(rans.decode(states, words, freqs, n), symbols)
    momos_bits = 16 * len(words) + 32 * len(states)

    # constriction gives every symbol of its alphabet some probability: show it the used ones only
    present = np.flatnonzero(freqs)
    renamed = (np.cumsum(freqs > 0) - 1)[symbols].astype(np.int32)
    model = constriction.stream.model.Categorical(freqs[present] / rans.TOTAL, perfect=True)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(renamed, model)
    oracle_bits = coder.num_valid_bits()
    decoded = constriction.stream.stack.AnsCoder(coder.get_compressed()).decode(model, n)
    assert np.array_equal(present[decoded], symbols)

    information = -np.log2(freqs[symbols] / rans.TOTAL).sum()
    assert information <= oracle_bits <= information + 64   # the oracle is an oracle
    lanes = len(states)
    assert lanes == rans.lanes_for(n)
    assert oracle_bits + 16 * lanes - 64 <= momos_bits <= oracle_bits + 32 * lanes + 64, \
        (momos_bits - oracle_bits, lanes)
