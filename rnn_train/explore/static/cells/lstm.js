// lstm: i, f, o = sigmoid(.); g = tanh(.); c = f * c + i * g; h = o * tanh(c) (gate blocks i, f, g, o),
// what rnn_train/model/cells.py's lstm_step computes, for one row.
({
  gates: ["i", "f", "g", "o"],
  saturating: ["i", "f", "o"],
  state: ["h", "c"],
  step(ops, gi, gh, state, acts) {
    const h = state[0], c = state[1], H = h.length;
    const i = acts.i, f = acts.f, g = acts.g, o = acts.o;
    for (let k = 0; k < H; k++) {
      const ik = ops.sigmoid(gi[k] + gh[k]);
      const fk = ops.sigmoid(gi[H + k] + gh[H + k]);
      const gk = ops.tanh(gi[2 * H + k] + gh[2 * H + k]);
      const ok = ops.sigmoid(gi[3 * H + k] + gh[3 * H + k]);
      i[k] = ik; f[k] = fk; g[k] = gk; o[k] = ok;
      c[k] = fk * c[k] + ik * gk;
      h[k] = ok * ops.tanh(c[k]);
    }
  },
})
