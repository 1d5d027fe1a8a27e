"""Network: a stack of recurrent layers and a linear head over one flat vector.

All parameters live in one contiguous vector, ``Network.params``; the named
weights (PyTorch's names and shapes) are views into it, so optimizers,
clipping and regularisation work on one array, and gradients come back in
the same layout.

Internally sequences are time-major ``(T, B, D)``: one GEMM projects the
input of every step of a layer, the cell kernel unrolls the recurrence, and
after the backward sweep the weight gradients of all steps are two GEMMs.
"""

import functools
import math
import operator
import threading
from typing import NamedTuple

import numpy as np

from . import _validation as val
from ._config import LARGE_WEIGHTS, batch_plan, kernel_section
from ._kernels import head, layers, losses

_LOSS_KERNELS = {
    "mse": losses.mse,
    "cross_entropy": losses.cross_entropy,
    "binary_cross_entropy": losses.binary_cross_entropy,
}
_SUFFIXES = ("", "_reverse")


class Network:
    """Stacked Elman RNN, LSTM or GRU layers with a linear head.

    Equations, gate order, weight names and shapes follow PyTorch's
    ``nn.RNN``/``nn.LSTM``/``nn.GRU`` (with ``batch_first=True``) followed
    by ``nn.Linear``.

    Parameters
    ----------
    n_features : int
        Input features per time step.
    hidden_sizes : int or tuple of int, default=(64,)
        Hidden units of each layer; sizes may differ per layer.
    cell : {"lstm", "gru", "rnn"}, default="lstm"
    n_outputs : int, default=1
        Outputs of the linear head (classes for cross-entropy).
    bidirectional : bool, default=False
        Add a reverse-direction layer beside each layer; layer outputs are
        the concatenation ``[forward, reverse]``.
    nonlinearity : {"tanh", "relu"}, default="tanh"
        Activation of the Elman RNN (``cell="rnn"`` only).
    dtype : {"float32", "float64"}, default="float32"
        Dtype of the parameters and of all computation.
    random_state : None, int or numpy.random.Generator
        Seeds the initialisation.

    Attributes
    ----------
    params : ndarray of shape (n_params,)
        Every parameter, in the order of `parameter_shapes`.

    Notes
    -----
    Initialisation: input weights (``weight_ih_*`` and ``head.weight``)
    Glorot-uniform over the whole matrix; each gate block of the recurrent
    weights ``weight_hh_*`` an independent random orthogonal matrix; biases
    zero, except the LSTM forget-gate part of ``bias_ih_*``, set to 1 so that
    gradients flow through the cell state from the start (Jozefowicz et al.,
    2015).
    """

    def __init__(
        self,
        n_features,
        hidden_sizes=(64,),
        cell="lstm",
        n_outputs=1,
        bidirectional=False,
        nonlinearity="tanh",
        dtype="float32",
        random_state=None,
    ):
        self.n_features = val.check_positive_int("n_features", n_features)
        self.hidden_sizes = val.check_hidden_sizes(hidden_sizes)
        self.cell = val.check_choice("cell", cell, val.CELLS)
        self.n_outputs = val.check_positive_int("n_outputs", n_outputs)
        self.bidirectional = bool(bidirectional)
        self.nonlinearity = val.check_choice("nonlinearity", nonlinearity, val.NONLINEARITIES)
        if self.nonlinearity == "relu" and self.cell != "rnn":
            raise ValueError(f"nonlinearity='relu' applies to cell='rnn' only, not {self.cell!r}")
        self.dtype = val.check_dtype(dtype)
        self._kernels = layers.CELLS[self.cell]
        self._shapes = self._parameter_shapes()
        self.params = np.zeros(sum(math.prod(s) for s in self._shapes.values()), dtype=self.dtype)
        self._weights = self.unflatten(self.params)
        self._initialise(val.as_generator(random_state))

    def __getstate__(self):
        # The cell's kernel module and the named views are rebuilt on load:
        # a module does not pickle, and pickled views would become copies.
        # The scratch buffers are not part of the model.
        state = self.__dict__.copy()
        del state["_kernels"], state["_weights"]
        state.pop("_scratch", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._kernels = layers.CELLS[self.cell]
        self._weights = self.unflatten(self.params)

    def _workspace(self):
        """This thread's reusable buffers for the passes.

        Reusing them call after call saves the page faults of fresh
        multi-megabyte arrays (see ``layers``); one set per thread, so
        concurrent calls on one network never share them.  An inference
        pass or a fit leaves at most `INFERENCE_SCRATCH` bytes of them
        (`_trim_workspace`).
        """
        scratch = self.__dict__.get("_scratch")
        if scratch is None:
            scratch = self._scratch = threading.local()
        if not hasattr(scratch, "buffers"):
            scratch.buffers = {}
        return scratch.buffers

    def _trim_workspace(self):
        """Drop this thread's buffers if together they pass `INFERENCE_SCRATCH`.

        Called after an inference pass and at the end of a fit, so that a
        model keeps no more than that between calls, however large the
        batches it was trained on or asked to predict.
        """
        workspace = self._workspace()
        if sum(buffer.nbytes for buffer in workspace.values()) > INFERENCE_SCRATCH:
            workspace.clear()

    # ------------------------------------------------------------------ layout
    @property
    def n_directions(self):
        """1, or 2 for a bidirectional network."""
        return 2 if self.bidirectional else 1

    @property
    def parameter_shapes(self):
        """Names and shapes of the parameters, in their order in `params`."""
        return dict(self._shapes)

    def _parameter_shapes(self):
        n_gates = self._kernels.N_GATES
        shapes = {}
        n_inputs = self.n_features
        for layer, hidden in enumerate(self.hidden_sizes):
            for suffix in _SUFFIXES[: self.n_directions]:
                shapes[f"weight_ih_l{layer}{suffix}"] = (n_gates * hidden, n_inputs)
                shapes[f"weight_hh_l{layer}{suffix}"] = (n_gates * hidden, hidden)
                shapes[f"bias_ih_l{layer}{suffix}"] = (n_gates * hidden,)
                shapes[f"bias_hh_l{layer}{suffix}"] = (n_gates * hidden,)
            n_inputs = hidden * self.n_directions
        shapes["head.weight"] = (self.n_outputs, n_inputs)
        shapes["head.bias"] = (self.n_outputs,)
        return shapes

    @property
    def weight_mask(self):
        """Boolean mask over `params`: True on weights, False on biases.

        The weights are what L2 regularisation penalises (as in
        scikit-learn's MLP, biases are left free).
        """
        mask = np.zeros(self.params.shape, dtype=bool)
        for name, view in self.unflatten(mask).items():
            view[...] = ".weight" in name or name.startswith("weight_")
        return mask

    def unflatten(self, flat):
        """Named views into a flat vector laid out like `params`.

        Parameters
        ----------
        flat : ndarray of shape (n_params,)

        Returns
        -------
        dict of str to ndarray
            Views: writing to them writes to ``flat``.
        """
        views, start = {}, 0
        for name, shape in self._shapes.items():
            stop = start + math.prod(shape)
            views[name] = flat[start:stop].reshape(shape)
            start = stop
        return views

    def _layer_weights(self, weights, layer, direction):
        """``(weight_ih, weight_hh, bias_ih, bias_hh)`` of a layer direction, from a dict like `get_weights`'."""
        return _weight_getter(layer, direction)(weights)

    def _initialise(self, rng):
        hidden_of = {}
        for name, shape in self._shapes.items():
            if name.startswith("weight_hh"):
                hidden_of[name] = shape[1]
        for name, view in self._weights.items():
            if name.startswith("weight_hh"):
                hidden = hidden_of[name]
                for block in range(view.shape[0] // hidden):
                    view[block * hidden : (block + 1) * hidden] = _random_orthogonal(hidden, rng)
            elif name.startswith("weight_ih") or name == "head.weight":
                limit = np.sqrt(6.0 / (view.shape[0] + view.shape[1]))
                view[...] = rng.uniform(-limit, limit, size=view.shape)
            elif self.cell == "lstm" and name.startswith("bias_ih"):
                hidden = view.shape[0] // 4
                view[hidden : 2 * hidden] = 1.0

    # ------------------------------------------------------------- weights I/O
    def get_weights(self):
        """Copies of the parameters by PyTorch name.

        Returns
        -------
        dict of str to ndarray
        """
        return {name: view.copy() for name, view in self._weights.items()}

    def set_weights(self, weights):
        """Replace all parameters.

        Everything is checked before anything is written, so a bad dict
        leaves the network unchanged.

        Parameters
        ----------
        weights : dict of str to array-like
            Exactly the names and shapes of `get_weights`; finite values.
        """
        missing = sorted(set(self._shapes) - set(weights))
        unknown = sorted(set(weights) - set(self._shapes))
        if missing or unknown:
            raise ValueError(f"weights do not match the network: missing {missing}, unknown {unknown}")
        checked = {}
        for name, shape in self._shapes.items():
            array = np.asarray(weights[name])
            if array.shape != shape:
                raise ValueError(f"weight {name!r} must have shape {shape}; got {array.shape}")
            if array.dtype.kind not in "biuf":
                raise TypeError(f"weight {name!r} must hold real numbers; got dtype {array.dtype}")
            val.check_finite(f"weight {name!r}", array)
            checked[name] = array
        for name, array in checked.items():
            self._weights[name][...] = array

    # ----------------------------------------------------------------- passes
    def forward(self, X, lengths=None, state=None, output="last"):
        """Outputs of the network.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_timesteps, n_features)
            Sequences, padded after their last valid step.
        lengths : array-like of shape (n_samples,), optional
            Valid steps per sequence; all ``n_timesteps`` when omitted.
        state : list, optional
            Initial state, one entry per layer: an array (n_directions,
            n_samples, H_l), or a pair ``(h, c)`` of them for the LSTM.
            Zeros when omitted.
        output : {"last", "sequence"}, default="last"
            ``"last"``: the head reads each sequence's state at its last
            valid step (for a bidirectional top layer, concatenated with the
            reverse state after the whole sequence); ``"sequence"``: the head
            reads every step.

        Returns
        -------
        Y : ndarray
            (n_samples, n_outputs) for ``"last"``; (n_samples, n_timesteps,
            n_outputs) for ``"sequence"``, zero at padded steps.
        final_state : list
            The state where each sequence ended, in the format of ``state``;
            passing it on as ``state`` with the next chunk of the sequences
            continues them exactly (unidirectional networks).
        """
        Y, tapes, n_samples = self._outputs(X, lengths, state, output)
        return Y, self._user_state(self._final_states(tapes), n_samples)

    def _outputs(self, X, lengths=None, state=None, output="last"):
        """`forward` without the final state: ``(Y, tapes, n_samples)``.

        For the callers that drop the state: copying it out of the tapes
        took 20 us of a one-sequence prediction here.
        """
        return self._batch_outputs(self._batch(X, lengths, state, output), output)

    def _valid_outputs(self, X, lengths, output):
        """``Y`` of `_outputs` for arrays valid by construction (see `_valid_batch`), without the checks."""
        return self._batch_outputs(self._valid_batch(X, lengths, None), output)[0]

    def _batch_outputs(self, batch, output):
        """`_outputs` of a `_Batch` (``output`` valid)."""
        tapes, top = self._unroll(batch)
        chunk = batch.x.shape[2]
        true_lengths = batch.lengths[: batch.n_samples]
        if output == "last":
            _, Y = self._last_outputs(tapes[-1], np.arange(batch.n_samples), true_lengths)
        else:
            b_idx, t_idx = np.nonzero(val.valid_mask(true_lengths, batch.n_steps))
            Y = np.zeros((batch.n_samples, batch.n_steps, self.n_outputs), dtype=self.dtype)
            Y[b_idx, t_idx] = self._head(top[b_idx // chunk, t_idx, b_idx % chunk])
        # The tapes stay alive with the caller whatever the workspace keeps.
        self._trim_workspace()
        return Y, tapes, batch.n_samples

    def _final_state(self, batch):
        """`forward`'s final state alone, without the head, for a `_Batch`.

        What a TBPTT window with nothing to score carries on to the next
        one: there the head over every step (``output="sequence"``) took
        90 us and picking the valid steps 40 more, beside a 230 us unroll
        (LSTM H=32, B=32, 25 steps).
        """
        tapes, _ = self._unroll(batch)
        final = self._user_state(self._final_states(tapes), batch.n_samples)
        self._trim_workspace()
        return final

    def _unroll(self, batch):
        """Every layer of a `_Batch` without a tape: ``(tapes, top)`` (see `_forward_layers`)."""
        # Forward kernels with small weights call no BLAS (`_kernels._products`): BLAS is left alone.
        with kernel_section(1 if batch.large else None):
            return self._forward_layers(batch.x, batch.lengths, batch.state, workspace=self._workspace(), tape=False)

    def _rollout(self, first, state, horizon):
        """Outputs of ``horizon`` steps of one sequence, each step's fed back as the next one's input.

        What `forward` would give called one step at a time, bit for bit,
        but the input and the state are validated and converted once: so
        called, each step took 225 us for an LSTM H=32 here, almost all of
        it that conversion.  The outputs are fed back as they come, NaN or
        infinite ones too.

        Parameters
        ----------
        first : ndarray of shape (n_features,)
            The first step's input.
        state : list or None
            As in `forward`, for one sample.
        horizon : int

        Returns
        -------
        outputs : ndarray of shape (horizon, n_outputs)
        final_state : list
            As in `forward`.
        """
        if self.n_outputs != self.n_features:
            raise ValueError(
                f"feeding outputs back needs n_outputs == n_features; got {self.n_outputs} and {self.n_features}"
            )
        batch = self._batch(np.asarray(first)[None, None, :], None, state, "sequence")
        x, chunked_state = batch.x, batch.state
        outputs = np.empty((horizon, self.n_outputs), dtype=self.dtype)
        workspace = self._workspace()
        weight_t, bias = self._head_weight_t(), self._weights["head.bias"]
        with kernel_section(1 if batch.large else None):
            for step in range(horizon):
                tapes, top = self._forward_layers(x, batch.lengths, chunked_state, workspace=workspace, tape=False)
                # `_head`, written in place, with the head's weight transposed once for all steps.
                head.linear(np.ascontiguousarray(top[0, 0]), weight_t, bias, outputs[step : step + 1])
                x = outputs[step].reshape(x.shape)
                # Copies: the next step's buffers may be these ones.
                chunked_state = [
                    [tuple(array.copy() for array in parts) for parts in layer] for layer in self._final_states(tapes)
                ]
        self._trim_workspace()
        return outputs, self._user_state(chunked_state, 1)

    def loss(self, X, y, lengths=None, loss="mse", output="last", state=None, sample_weight=None):
        """Loss of a batch, without gradients (a forward pass only).

        Parameters are those of `loss_and_grad`.

        Returns
        -------
        float
        """
        val.check_choice("loss", loss, val.LOSSES)
        Y = self._outputs(X, lengths, state, output)[0]
        n_samples, n_steps = Y.shape[:2]
        lengths = val.check_lengths(lengths, n_samples, np.shape(X)[1])
        targets = val.check_targets(y, loss, output, lengths, np.shape(X)[1], self.n_outputs, self.dtype)
        weights = val.check_sample_weight(sample_weight, n_samples, self.dtype)
        if output == "last":
            out, rows, row_weights = Y, targets, weights
        else:
            b_idx, t_idx = np.nonzero(val.valid_mask(lengths, np.shape(X)[1]))
            out, rows, row_weights = Y[b_idx, t_idx], targets[b_idx, t_idx], weights[b_idx]
        scale = self._loss_scale(loss, output, weights, lengths, 0)
        return _LOSS_KERNELS[loss](
            np.ascontiguousarray(out), np.ascontiguousarray(rows), row_weights, scale, np.empty_like(out)
        )

    def loss_and_grad(
        self,
        X,
        y,
        lengths=None,
        loss="mse",
        output="last",
        truncate=None,
        state=None,
        sample_weight=None,
        *,
        loss_start=0,
        dropout=0.0,
        random_state=None,
    ):
        """Loss of a batch and its gradient w.r.t. every parameter.

        Parameters
        ----------
        X, lengths, state, output
            As in `forward`.
        y : array-like
            Targets: (n_samples[, n_outputs]) for ``output="last"``,
            (n_samples, n_timesteps[, n_outputs]) for ``"sequence"``; class
            indices without the output axis for ``"cross_entropy"``.
            Entries at padded steps are ignored.
        loss : {"mse", "cross_entropy", "binary_cross_entropy"}
            Mean squared error over every valid target element (PyTorch's
            ``MSELoss``); softmax cross-entropy over the outputs, mean over
            valid positions; binary cross-entropy on logits, mean over valid
            elements.
        truncate : int, optional
            Truncated BPTT in chunks of ``truncate`` steps: the forward pass
            is exact, the gradient through the recurrent state is cut at
            ``t = truncate, 2 * truncate, ...``.  None (or >= n_timesteps) is
            full BPTT.  For unidirectional networks only one chunk's
            activations are held at a time.
        sample_weight : array-like of shape (n_samples,), optional
            Makes the loss a weighted mean.
        loss_start : int, default=0
            Steps before it carry no loss (they are still unrolled and
            back-propagated through): the overlap of a TBPTT(k1, k2) window
            with the previous one.
        dropout : float, default=0.0
            Inverted dropout on the outputs of every layer but the top one
            (PyTorch's ``dropout`` of ``nn.LSTM``), for training.
        random_state : None, int or numpy.random.Generator
            Draws the dropout masks.

        Returns
        -------
        loss : float
        grads : dict of str to ndarray
            Same names and shapes as `get_weights`.
        final_state : list
            As in `forward`.
        """
        result = self._backprop(
            X, y, lengths, loss, output, truncate, state, sample_weight, loss_start, dropout, random_state
        )
        return result.loss, self.unflatten(result.grad), self._user_state(result.chunked_state, result.n_samples)

    def loss_and_grad_vector(
        self,
        X,
        y,
        lengths=None,
        loss="mse",
        output="last",
        truncate=None,
        state=None,
        sample_weight=None,
        *,
        loss_start=0,
        dropout=0.0,
        random_state=None,
    ):
        """`loss_and_grad` with the gradient as one vector laid out like `params`.

        Returns
        -------
        loss : float
        grad : ndarray of shape (n_params,)
        final_state : list
        """
        result = self._backprop(
            X, y, lengths, loss, output, truncate, state, sample_weight, loss_start, dropout, random_state
        )
        return result.loss, result.grad, self._user_state(result.chunked_state, result.n_samples)

    def gradient_flow(
        self, X, y, lengths=None, loss="mse", output="last", truncate=None, state=None, sample_weight=None
    ):
        """How the gradient decays or explodes back through time.

        Parameters are those of `loss_and_grad`.

        Returns
        -------
        ndarray of shape (n_layers, n_directions, n_timesteps)
            ``||d loss / d h_t||`` over the batch (all samples and units) for
            each layer, direction and step ``t``: the gradient reaching each
            hidden state, from the loss terms after it (through time) and
            from the layer above.
        """
        result = self._backprop(
            X, y, lengths, loss, output, truncate, state, sample_weight, 0, 0.0, None, record_flow=True
        )
        return result.flow

    def _backprop(
        self,
        X,
        y,
        lengths,
        loss,
        output,
        truncate,
        state,
        sample_weight,
        loss_start,
        dropout,
        random_state,
        need_input_grad=False,
        record_flow=False,
    ):
        """Validate, then `_backprop_batch`.

        Returns
        -------
        _Result
        """
        batch = self._batch(X, lengths, state, output)
        true_lengths = batch.lengths[: batch.n_samples]
        val.check_choice("loss", loss, val.LOSSES)
        targets = val.check_targets(y, loss, output, true_lengths, batch.n_steps, self.n_outputs, self.dtype)
        weights = val.check_sample_weight(sample_weight, batch.n_samples, self.dtype)
        window = val.check_truncate(truncate)
        loss_start = val.check_positive_int("loss_start", loss_start, minimum=0)
        dropout = val.check_fraction("dropout", dropout)
        rng = val.as_generator(random_state) if dropout else None
        return self._backprop_batch(
            batch, targets, weights, loss, output, window, loss_start, dropout, rng, need_input_grad, record_flow
        )

    def _backprop_batch(
        self, batch, targets, weights, loss, output, window, loss_start, dropout, rng, need_input_grad=False,
        record_flow=False,
    ):
        """Forward, loss and backward over the segments of a `_Batch`, its other inputs valid.

        ``targets`` and ``weights`` as `_backprop` validates them, ``window``
        the TBPTT chunk (0: full BPTT).  A training step calls this
        directly, on a window of a training set `Trainer` validated once
        (`_valid_batch`): the checks, passes over every array, took 150-250 us
        of a 2.4-3.5 ms step of ``fit`` here.

        Returns
        -------
        _Result
        """
        n_samples, n_steps = batch.n_samples, batch.n_steps
        true_lengths = batch.lengths[:n_samples]
        if window >= n_steps:
            window = 0
        objective = _Objective(
            loss, output, targets, weights, self._loss_scale(loss, output, weights, true_lengths, loss_start),
            true_lengths, loss_start,
        )
        if self.bidirectional or window == 0:
            # The reverse direction needs the whole sequence, so the cut is
            # applied inside one whole-sequence backward pass.
            segments = [(0, n_steps, window)]
        else:
            segments = [(t0, min(t0 + window, n_steps), 0) for t0 in range(0, n_steps, window)]
        grad = np.zeros_like(self.params)
        value = 0.0
        input_grads, flows = [], []
        state_now = batch.state
        with kernel_section(1 if self._calls_blas(batch.large, need_input_grad) else None):
            for t0, t1, cut in segments:
                x = batch.x if len(segments) == 1 else np.ascontiguousarray(batch.x[:, t0:t1])
                seg_lengths = batch.lengths
                if len(segments) > 1:
                    seg_lengths = np.minimum(np.maximum(batch.lengths - t0, 0), t1 - t0)
                masks = self._dropout_masks(x.shape, dropout, rng)
                flow = [] if record_flow else None
                part, state_now, dx = self._segment(
                    x, seg_lengths, state_now, objective, t0, cut, grad, need_input_grad, masks, flow
                )
                if t1 < n_steps:
                    # Copies: the next segment's pass reuses the tapes' buffers.
                    state_now = [[tuple(array.copy() for array in parts) for parts in layer] for layer in state_now]
                value += part
                input_grads.append(dx)
                flows.append(flow)
        input_grad = None
        if need_input_grad:
            input_grad = _from_chunks(np.concatenate(input_grads, axis=1), n_samples)
        flow = None
        if record_flow:
            # (layers, directions, K, T, C) per segment -> norms per step.
            squares = np.concatenate([np.array(f) for f in flows], axis=3)
            flow = np.sqrt(squares.astype(np.float64).sum(axis=(2, 4)))
        return _Result(value, grad, state_now, n_samples, input_grad, flow)

    def _calls_blas(self, large, need_input_grad):
        """Whether a training pass calls BLAS inside the kernels' parallel regions (`layers.backward_calls_blas`)."""
        inputs = (self.n_features,) + tuple(size * self.n_directions for size in self.hidden_sizes[:-1])
        return any(
            layers.backward_calls_blas(width, hidden, layer > 0 or need_input_grad, large)
            for layer, (width, hidden) in enumerate(zip(inputs, self.hidden_sizes))
        )

    def _loss_scale(self, loss, output, weights, lengths, loss_start):
        """One over the normaliser of the weighted mean, for the whole batch."""
        if output == "last":
            per_sample = np.where(lengths - 1 >= loss_start, weights, 0)
        else:
            per_sample = weights * np.maximum(lengths - loss_start, 0)
        denominator = float(per_sample.astype(np.float64).sum())
        if denominator <= 0:
            raise ValueError("no target positions with positive weight: check loss_start and sample_weight")
        if loss != "cross_entropy":
            denominator *= self.n_outputs
        return 1.0 / denominator

    def _dropout_masks(self, shape, rate, rng):
        """Inverted-dropout masks for the inputs of layers 1, 2, ... (None: none)."""
        masks = [None]
        for hidden in self.hidden_sizes[:-1]:
            if not rate:
                masks.append(None)
                continue
            keep = rng.random(shape[:3] + (hidden * self.n_directions,)) >= rate
            masks.append(keep.astype(self.dtype) / self.dtype.type(1.0 - rate))
        return masks

    def _segment(self, x, lengths, state, objective, t0, truncate, grad, need_input_grad, masks, flow):
        """Forward, loss and backward over time steps ``t0 .. t0 + T`` of a batch.

        Parameters
        ----------
        x : ndarray of shape (K, T, C, D)
            The segment, chunk-major.
        lengths : ndarray of shape (K * C,)
            Valid steps of each (padded) sample within the segment.
        masks : list
            Dropout mask of each layer's input, or None.
        flow : list or None
            Receives the squared d loss / d h_t of each layer and direction.

        Returns the segment's share of the loss, the state after it (per
        layer and direction) and d loss / d x (or None); accumulates the
        parameter gradient into ``grad``.
        """
        workspace = self._workspace()
        tapes, top = self._forward_layers(x, lengths, state, masks, workspace)
        n_steps, chunk = x.shape[1], x.shape[2]
        first = max(objective.loss_start - t0, 0)
        if objective.output == "last":
            last = objective.lengths - 1
            b_idx = np.nonzero((last >= t0 + first) & (last < t0 + n_steps))[0]
            t_idx = last[b_idx] - t0
            features, out = self._last_outputs(tapes[-1], b_idx, t_idx + 1)
            targets = objective.targets[b_idx]
        else:
            valid = val.valid_mask(lengths[: objective.lengths.shape[0]], n_steps)
            valid[:, :first] = False
            b_idx, t_idx = np.nonzero(valid)
            features = top[b_idx // chunk, t_idx, b_idx % chunk]
            targets = objective.targets[b_idx, t_idx + t0]
            out = self._head(features)
        grads = self.unflatten(grad)
        d_out = np.empty_like(out)
        value = _LOSS_KERNELS[objective.loss](
            out, np.ascontiguousarray(targets), objective.weights[b_idx], objective.scale, d_out
        )
        d_top, out_steps = self._head_backward(d_out, features, b_idx, t_idx, top.shape[:3], objective.output, grads)
        dx = self._backward_layers(
            tapes, lengths, d_top, out_steps, truncate, t0, grads, need_input_grad, masks, flow, workspace
        )
        return value, self._final_states(tapes), None if dx is None else dx.copy()

    def _head_backward(self, d_out, features, b_idx, t_idx, shape, output, grads):
        """Back through the head (``_kernels.head.backward``): its gradients into ``grads``, and d loss / d top layer output per direction, for `layers.backward`.

        ``d_out`` is the gradient w.r.t. the outputs of samples ``b_idx`` at
        steps ``t_idx``, ``features`` their head inputs; ``shape`` is the top
        layer's (K, T, C).  For ``output="last"`` each sample has one such
        step, so the gradient is (K, 1, C, H) with the step in ``out_steps``
        (the reverse direction is read after the whole sequence, at step 0):
        a dense (K, T, C, H) buffer of zeros was as large as an Elman layer's
        states.

        Returns
        -------
        d_top : list of ndarray
        out_steps : list of ndarray or None
        """
        n_chunks, n_steps, chunk = shape
        last = output == "last"
        d_top = [
            np.zeros((n_chunks, 1 if last else n_steps, chunk, self.hidden_sizes[-1]), self.dtype)
            for _ in range(self.n_directions)
        ]
        d_top_reverse = d_top[1] if self.bidirectional else np.empty((0, 0, 0, 0), self.dtype)
        head.backward(
            d_out, features, self._weights["head.weight"], b_idx, np.zeros_like(t_idx) if last else t_idx,
            grads["head.weight"], grads["head.bias"], d_top[0], d_top_reverse,
        )
        if not last:
            return d_top, [None] * self.n_directions
        out_steps = []
        for direction in range(self.n_directions):
            steps = np.full(n_chunks * chunk, -1, dtype=np.int64)
            steps[b_idx] = 0 if direction == 1 else t_idx
            out_steps.append(steps)
        return d_top, out_steps

    # ------------------------------------------------------------ layer stack
    def _forward_layers(self, x, lengths, state, masks=None, workspace=None, tape=True):
        """Unroll every layer of a chunk-major batch (``tape``: see `layers.forward`).

        ``state`` is ``[layer][direction] -> tuple`` of (K, C, H) arrays, or
        None for zeros.

        Returns
        -------
        tapes : list
            ``tapes[layer] = (layer_input, [tape per direction])``.
        top : ndarray of shape (K, T, C, H_top * n_directions)
            The top layer's output (a view of its states, for one direction).
        """
        use_relu = self.nonlinearity == "relu"
        tapes = []
        layer_input = x
        for layer in range(len(self.hidden_sizes)):
            if masks is not None and masks[layer] is not None:
                layer_input = layer_input * masks[layer]
            # Copied here, not after each layer: the top layer's output is
            # only read, and a copy of it added 11-22% to a step's peak memory.
            layer_input = np.ascontiguousarray(layer_input)
            directions = []
            for direction in range(self.n_directions):
                w_ih, w_hh, b_ih, b_hh = self._layer_weights(self._weights, layer, direction)
                initial = None if state is None else state[layer][direction]
                directions.append(
                    layers.forward(
                        self.cell, layer_input, w_ih, b_ih, w_hh, b_hh, initial, lengths, direction == 1, use_relu,
                        workspace, (layer, direction), tape,
                    )
                )
            tapes.append((layer_input, directions))
            outputs = [_direction_output(tape[1], direction == 1) for direction, tape in enumerate(directions)]
            layer_input = outputs[0] if len(outputs) == 1 else np.concatenate(outputs, axis=3)
        return tapes, layer_input

    def _backward_layers(
        self, tapes, lengths, d_top, out_steps, truncate, t0, grads, need_input_grad, masks, flow, workspace
    ):
        """Back-propagate ``d_top`` (see `_head_backward`) through the stack, accumulating ``grads``."""
        use_relu = self.nonlinearity == "relu"
        d_outputs = d_top
        layer_flows = [None] * len(tapes)
        for layer in reversed(range(len(tapes))):
            layer_input, directions = tapes[layer]
            want_dx = layer > 0 or need_input_grad
            dx_total = None
            squares = [None] * len(directions)
            for direction, tape in enumerate(directions):
                w_ih, w_hh, _, _ = self._layer_weights(self._weights, layer, direction)
                if flow is not None:
                    squares[direction] = np.zeros(layer_input.shape[:3], self.dtype)
                dx = layers.backward(
                    self.cell, layer_input, w_ih, w_hh, tape, lengths, direction == 1, truncate, t0,
                    d_outputs[direction], want_dx, self._layer_weights(grads, layer, direction), use_relu,
                    squares[direction], workspace, (layer, direction), out_steps[direction],
                )
                if want_dx:
                    dx_total = dx if dx_total is None else dx_total + dx
            layer_flows[layer] = squares
            if masks[layer] is not None:
                dx_total *= masks[layer]
            if layer > 0:
                hidden = self.hidden_sizes[layer - 1]
                d_outputs = [
                    np.ascontiguousarray(dx_total[..., d * hidden : (d + 1) * hidden]) for d in range(self.n_directions)
                ]
                out_steps = [None] * self.n_directions
        if flow is not None:
            flow.extend(layer_flows)
        return dx_total if need_input_grad else None

    # ------------------------------------------------------------------ head
    def _head(self, features):
        """Outputs (N, n_outputs) of head inputs (N, F), each row on its own (``_kernels.head``)."""
        out = np.empty((features.shape[0], self.n_outputs), dtype=self.dtype)
        head.linear(np.ascontiguousarray(features), self._head_weight_t(), self._weights["head.bias"], out)
        return out

    def _head_weight_t(self):
        # A view for one output: a column is C-ordered too.
        return np.ascontiguousarray(self._weights["head.weight"].T)

    def _last_outputs(self, top_layer, b_idx, slots):
        """Head inputs and outputs of "last" mode for samples ``b_idx``, read at state slots ``slots``."""
        _, directions = top_layer
        h_reverse = directions[1][1] if self.bidirectional else np.empty((0, 0, 0, 0), dtype=self.dtype)
        features = np.empty((b_idx.shape[0], self.hidden_sizes[-1] * self.n_directions), dtype=self.dtype)
        out = np.empty((b_idx.shape[0], self.n_outputs), dtype=self.dtype)
        head.last_outputs(
            directions[0][1], h_reverse, b_idx, slots, self._head_weight_t(), self._weights["head.bias"], features, out
        )
        return features, out

    # ----------------------------------------------------------------- state
    def _final_states(self, tapes):
        """``[layer][direction] -> tuple`` of (K, C, H) states after the unroll: views into the tapes."""
        n_state = self._kernels.N_STATE
        finals = []
        for _, directions in tapes:
            per_direction = []
            for direction, tape in enumerate(directions):
                slot = 0 if direction == 1 else tape[1].shape[1] - 1
                per_direction.append(tuple(buffer[:, slot] for buffer in tape[1 : 1 + n_state]))
            finals.append(per_direction)
        return finals

    def _user_state(self, split, n_samples):
        """``[layer][direction] -> tuple`` of chunked states to the public per-layer format."""
        state = []
        for directions in split:
            stacked = tuple(_unchunk_directions(parts, n_samples) for parts in zip(*directions))
            state.append(stacked if self._kernels.N_STATE == 2 else stacked[0])
        return state

    def _batch(self, X, lengths, state, output):
        """Validate a batch; returns it chunk-major with lengths and state."""
        val.check_choice("output", output, val.OUTPUTS)
        X = val.check_sequences(X, self.n_features, self.dtype)
        n_samples, n_steps = X.shape[:2]
        lengths = val.check_lengths(lengths, n_samples, n_steps)
        split_state = val.check_state(
            state, self.hidden_sizes, self.n_directions, self._kernels.N_STATE, n_samples, self.dtype
        )
        return self._chunked(X, lengths, split_state)

    def _valid_batch(self, X, lengths, state):
        """`_batch` of arrays valid by construction, without its checks.

        ``X`` (n_samples, n_timesteps, n_features), finite, of the network's
        dtype, any strides; ``lengths`` int64 in [1, n_timesteps]; ``state``
        as `forward` returns it, or None: a window of a training set that
        `Trainer` validated and the state it carries, or what an estimator
        validated.  Checked again, the input of a one-sequence prediction
        took 10-15 us more.
        """
        split_state = None
        if state is not None:
            n_state = self._kernels.N_STATE
            split_state = val.split_state([tuple(s) if n_state == 2 else (s,) for s in state], self.n_directions)
        return self._chunked(X, lengths, split_state)

    def _chunked(self, X, lengths, split_state):
        """A valid batch chunk-major (`_Batch`); ``split_state`` as ``_validation.check_state`` returns it."""
        n_samples, n_steps = X.shape[:2]
        largest = max(self._kernels.N_GATES * size * size for size in self.hidden_sizes) * self.dtype.itemsize
        chunk = batch_plan(n_samples, largest)
        x = np.ascontiguousarray(_to_chunks(X, chunk).transpose(0, 2, 1, 3))
        chunked_state = None
        if split_state is not None:
            chunked_state = [[tuple(_to_chunks(a, chunk) for a in parts) for parts in layer] for layer in split_state]
        padded_lengths = _to_chunks(lengths, chunk).reshape(-1)
        return _Batch(x, padded_lengths, chunked_state, n_samples, n_steps, largest > LARGE_WEIGHTS)


class _Batch(NamedTuple):
    """A validated batch, chunk-major, its state split per layer and direction."""

    x: np.ndarray  # (K, T, C, D)
    lengths: np.ndarray  # (K * C,): zero for the padding samples
    state: list  # or None: zeros
    n_samples: int
    n_steps: int
    large: bool  # some layer calls BLAS in its forward pass: see _config.batch_plan


class _Objective(NamedTuple):
    """What the head is scored against, for the whole batch."""

    loss: str
    output: str
    targets: np.ndarray
    weights: np.ndarray
    scale: float  # one over the normaliser of the weighted mean
    lengths: np.ndarray  # whole-sequence lengths (segments see clipped ones)
    loss_start: int  # steps before it carry no loss


class _Result(NamedTuple):
    """What one backward pass over a batch gives."""

    loss: float
    grad: np.ndarray
    # Chunked, as `_segment` leaves it: `Network._user_state` of it is the
    # final state.  Converted only for the callers that want it (a training
    # step's last window does not): 25-55 us of a 3.5 ms LSTM H=64 B=64 step here.
    chunked_state: list
    n_samples: int
    input_grad: np.ndarray  # or None
    flow: np.ndarray  # or None


#: Bytes of buffers a thread keeps after an inference pass or a fit.  Kept, they
#: made LSTM forward passes (H=128, T=100) 24-25% faster here with B=32 (776
#: page faults a call without) and 13-15% with B=256, bitwise the same; a
#: cap, since a prediction over a whole data set would otherwise hold its
#: buffers for the model's lifetime.
INFERENCE_SCRATCH = 64 << 20


@functools.cache
def _weight_getter(layer, direction):
    """Picks a layer direction's four weights out of a dict (built once: a call
    formatting their names took a few us of every pass)."""
    suffix = f"_l{layer}{_SUFFIXES[direction]}"
    return operator.itemgetter(*(kind + suffix for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")))


def _direction_output(h, reverse):
    """Outputs (K, T, C, H) of one direction from its state buffer."""
    return h[:, :-1] if reverse else h[:, 1:]


def _to_chunks(a, chunk):
    """(B, ...) -> (K, C, ...), padding with zero samples to a whole chunk (a view if none)."""
    n_chunks = -(-a.shape[0] // chunk)
    if n_chunks * chunk == a.shape[0]:
        return a.reshape((n_chunks, chunk) + a.shape[1:])
    padded = np.zeros((n_chunks * chunk,) + a.shape[1:], dtype=a.dtype)
    padded[: a.shape[0]] = a
    return padded.reshape((n_chunks, chunk) + a.shape[1:])


def _unchunk_directions(parts, n_samples):
    """(K, C, H) states of each direction -> one new (n_directions, n_samples, H) array."""
    hidden = parts[0].shape[-1]
    out = np.empty((len(parts), n_samples, hidden), dtype=parts[0].dtype)
    for direction, part in enumerate(parts):
        out[direction] = part.reshape((-1, hidden))[:n_samples]
    return out


def _from_chunks(a, n_samples):
    """Inverse of `_to_chunks` for (K, C, ...) states or (K, T, C, ...) sequences."""
    if a.ndim == 4:
        a = a.transpose(0, 2, 1, 3)
    return np.ascontiguousarray(a.reshape((-1,) + a.shape[2:])[:n_samples])


def _random_orthogonal(n, rng):
    """A random orthogonal n x n matrix (Haar measure, Mezzadri 2007)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return q * np.sign(np.diag(r))
