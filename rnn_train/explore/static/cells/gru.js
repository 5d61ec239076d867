// gru: r = sigmoid(gi_r + gh_r); z = sigmoid(gi_z + gh_z); n = tanh(gi_n + r * gh_n);
// h = (1 - z) * n + z * h, what rnn_train/model/cells.py's gru_step computes, for one row.
({
  gates: ["r", "z", "n"],
  saturating: ["r", "z"],
  state: ["h"],
  step(ops, gi, gh, state, acts) {
    const h = state[0], H = h.length, r = acts.r, z = acts.z, n = acts.n;
    for (let k = 0; k < H; k++) {
      const rk = ops.sigmoid(gi[k] + gh[k]);
      const zk = ops.sigmoid(gi[H + k] + gh[H + k]);
      const nk = ops.tanh(gi[2 * H + k] + rk * gh[2 * H + k]);
      r[k] = rk; z[k] = zk; n[k] = nk;
      h[k] = (1 - zk) * nk + zk * h[k];
    }
  },
})
