"""Triton kernel for the element-wise affine map `y = x * s + shift`, its inverse and fused backward.

One kernel body serves forward/inverse and the backward pass through constexpr flags; the scale
parameterisation is the constexpr `SCALE` (0 tanh, 1 softplus, 2 sigmoid, 3 exp, the order of
`SCALE_FUNCTIONS`). Compiled for CUDA tensors, or interpreted on CPU tensors when `TRITON_INTERPRET=1`
was set before Triton was first imported.

Layout and blocking as in `_triton_spline`: `(rows, features)` inputs, `x` contiguous and `shift`,
`raw_scale` read through their row and feature strides (slices of one parameter tensor), program `(i, j)`
owns `BLOCK_ROWS` rows and one split of the features, walked in tiles of `BLOCK_FEATURES`; the
forward pass writes one partial log-det per (row, split), summed on the host. Arithmetic is float32.
"""

# No `from __future__ import annotations`: Triton < 3.2's interpreter finds constexpr arguments by
# their annotation objects.
import triton
import triton.language as tl

__all__ = ["affine_kernel"]


@triton.jit
def affine_kernel(
    x_ptr,
    shift_ptr,
    raw_scale_ptr,
    out_ptr,
    ladj_partial_ptr,
    grad_out_ptr,
    grad_ladj_ptr,
    grad_x_ptr,
    grad_shift_ptr,
    grad_raw_scale_ptr,
    rows,
    features,
    split_features,
    splits,
    shift_row_stride,
    shift_feature_stride,
    raw_scale_row_stride,
    raw_scale_feature_stride,
    scale_bound,
    softplus_shift,
    min_scale,
    sigmoid_shift,
    log_sigmoid_shift,
    SCALE: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_FEATURES: tl.constexpr,
    INVERSE: tl.constexpr,
    BACKWARD: tl.constexpr,
):
    row_block = tl.program_id(0)
    split = tl.program_id(1)
    local = tl.arange(0, BLOCK_ROWS * BLOCK_FEATURES)
    row = row_block * BLOCK_ROWS + local // BLOCK_FEATURES
    row_mask = row < rows

    ladj_sum = tl.zeros([BLOCK_ROWS], dtype=tl.float32)
    grad_ladj = tl.zeros([BLOCK_ROWS * BLOCK_FEATURES], dtype=tl.float32)
    if BACKWARD:
        grad_ladj = tl.load(grad_ladj_ptr + row, mask=row_mask, other=0.0).to(tl.float32)

    first_feature = split * split_features
    last_feature = tl.minimum(first_feature + split_features, features)
    # A while loop: Triton < 3.7's interpreter cannot take tensor bounds in range() under numpy 2.
    start = first_feature
    while start < last_feature:
        feature = start + local % BLOCK_FEATURES
        mask = row_mask & (feature < last_feature)
        row_64 = row.to(tl.int64)
        element = row_64 * features + feature
        shift_offsets = row_64 * shift_row_stride + feature * shift_feature_stride
        raw_offsets = row_64 * raw_scale_row_stride + feature * raw_scale_feature_stride
        x = tl.load(x_ptr + element, mask=mask, other=0.0).to(tl.float32)
        shift = tl.load(shift_ptr + shift_offsets, mask=mask, other=0.0).to(tl.float32)
        raw = tl.load(raw_scale_ptr + raw_offsets, mask=mask, other=0.0).to(tl.float32)

        # log s and d(log s)/d(raw) for each parameterisation.
        if SCALE == 0:
            z = raw / scale_bound
            magnitude = tl.abs(z)
            e = tl.exp(-2.0 * magnitude)
            tanh_large = (1.0 - e) / (1.0 + e)
            z2 = z * z
            tanh_small = magnitude * (1.0 - z2 / 3.0 + 2.0 * z2 * z2 / 15.0 - 17.0 * z2 * z2 * z2 / 315.0)
            tanh_z = tl.where(magnitude < 0.05, tanh_small, tanh_large)
            tanh_z = tl.where(z < 0.0, -tanh_z, tanh_z)
            log_scale = scale_bound * tanh_z
            log_scale_grad = 1.0 - tanh_z * tanh_z
        elif SCALE == 1:
            shifted = raw + softplus_shift
            small = tl.exp(-tl.abs(shifted))
            one_plus = 1.0 + small
            log1p_small = tl.where(
                one_plus == 1.0,
                small,
                tl.log(one_plus) * small / tl.where(one_plus == 1.0, 1.0, one_plus - 1.0),
            )
            scale = min_scale + tl.maximum(shifted, 0.0) + log1p_small
            log_scale = tl.log(scale)
            log_scale_grad = 1.0 / ((1.0 + tl.exp(-shifted)) * scale)
        elif SCALE == 2:
            shifted = raw + sigmoid_shift
            small = tl.exp(-tl.abs(shifted))
            one_plus = 1.0 + small
            log1p_small = tl.where(
                one_plus == 1.0,
                small,
                tl.log(one_plus) * small / tl.where(one_plus == 1.0, 1.0, one_plus - 1.0),
            )
            log_scale = tl.minimum(shifted, 0.0) - log1p_small - log_sigmoid_shift
            log_scale_grad = 1.0 / (1.0 + tl.exp(shifted))  # sigmoid(-shifted)
        else:
            log_scale = raw
            log_scale_grad = tl.full(raw.shape, 1.0, tl.float32)

        if INVERSE:
            inverse_scale = tl.exp(-log_scale)
            out = (x - shift) * inverse_scale
            log_det = -log_scale
        else:
            scale_value = tl.exp(log_scale)
            out = x * scale_value + shift
            log_det = log_scale

        if not BACKWARD:
            tl.store(out_ptr + element, out.to(out_ptr.dtype.element_ty), mask=mask)
            log_det = tl.where(mask, log_det, 0.0)
            ladj_sum += tl.sum(tl.reshape(log_det, (BLOCK_ROWS, BLOCK_FEATURES)), 1)
        else:
            grad_out = tl.load(grad_out_ptr + element, mask=mask, other=0.0).to(tl.float32)
            if INVERSE:
                grad_x = grad_out * inverse_scale
                grad_shift = -grad_x
                grad_log_scale = -grad_out * out - grad_ladj
            else:
                grad_x = grad_out * scale_value
                grad_shift = grad_out
                grad_log_scale = grad_out * x * scale_value + grad_ladj
            tl.store(grad_x_ptr + element, grad_x.to(grad_x_ptr.dtype.element_ty), mask=mask)
            tl.store(grad_shift_ptr + element, grad_shift.to(grad_shift_ptr.dtype.element_ty), mask=mask)
            grad_raw = grad_log_scale * log_scale_grad
            tl.store(
                grad_raw_scale_ptr + element, grad_raw.to(grad_raw_scale_ptr.dtype.element_ty), mask=mask
            )

        start += BLOCK_FEATURES

    if not BACKWARD:
        ladj_rows = row_block * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        tl.store(ladj_partial_ptr + ladj_rows * splits + split, ladj_sum, mask=ladj_rows < rows)
