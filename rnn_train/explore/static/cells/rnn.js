// rnn: h = tanh(gi + gh), what rnn_train/model/cells.py's rnn_step computes, for one row.
({
  gates: [],
  saturating: [],
  state: ["h"],
  step(ops, gi, gh, state, acts) {
    const h = state[0], H = h.length;
    for (let k = 0; k < H; k++) h[k] = ops.tanh(gi[k] + gh[k]);
  },
})
