"""Triton kernel for the rational-quadratic spline: forward, inverse and their fused backward.

One kernel body serves the four cases through constexpr flags (`INVERSE`, `BACKWARD`), so that the
knot construction (softmax, cumulative sum, softplus), the bin search and the rational-quadratic
algebra are written once. It compiles for CUDA tensors; with `TRITON_INTERPRET=1` set before Triton
is first imported, `triton.jit` builds it for Triton's interpreter instead, which runs on CPU tensors.

Layout: `x (rows, features)` is contiguous; widths and heights `(rows, features, BINS)` and derivatives
`(rows, features, BINS + 1)` are read through row and feature strides (their last stride is 1), so
slices of one parameter tensor and parameters broadcast over rows need no copy. Gradients are
written contiguously. Program `(i, j)` owns `BLOCK_ROWS` rows and the feature
range `[j * split_features, (j + 1) * split_features)`, which it walks in tiles of `BLOCK_FEATURES`.
A tile holds `BLOCK_ROWS * BLOCK_FEATURES` elements as a flat vector and their knot parameters as an
`(elements, PADDED)` matrix (`PADDED` = next power of two >= BINS + 1). The forward pass sums the
log-derivatives of its rows in registers and writes one partial sum per (row, split) - no atomics,
so the result is deterministic; the host adds the splits. The backward pass recomputes the forward
quantities and writes the gradients of x and of the three raw parameter tensors element by element.

All arithmetic is float32 whatever the storage dtype (float32 or bfloat16); loads convert and stores
cast to the pointer's element type.
"""

# No `from __future__ import annotations`: Triton < 3.2's interpreter finds constexpr arguments by
# their annotation objects.
import triton
import triton.language as tl

__all__ = ["rational_quadratic_spline_kernel"]


@triton.jit
def _knot_gradient_to_raw(
    grad_k, grad_k1, at_left, at_right, is_inner_knot, prob, bound, min_size, BINS: tl.constexpr
):
    """Gradients of the two knots bounding each element's bin -> gradients of the raw (softmax) sizes.

    Scatters onto the inner knots, then back through `knots = 2 bound cumsum(sizes) - bound` and
    `sizes = min_size + (1 - min_size K) softmax(raw)`. Shapes: `grad_k`, `grad_k1` `(rows,)`; the rest
    `(rows, knot columns)`.
    """
    grad_knot = tl.where(
        is_inner_knot,
        tl.where(at_left, grad_k[:, None], 0.0) + tl.where(at_right, grad_k1[:, None], 0.0),
        0.0,
    )
    grad_sizes = 2.0 * bound * (tl.sum(grad_knot, 1)[:, None] - tl.cumsum(grad_knot, 1) + grad_knot)
    grad_prob = (1.0 - min_size * BINS) * grad_sizes
    return prob * (grad_prob - tl.sum(prob * grad_prob, 1)[:, None])


@triton.jit
def rational_quadratic_spline_kernel(
    x_ptr,
    widths_ptr,
    heights_ptr,
    derivatives_ptr,
    out_ptr,
    ladj_partial_ptr,
    grad_out_ptr,
    grad_ladj_ptr,
    grad_x_ptr,
    grad_widths_ptr,
    grad_heights_ptr,
    grad_derivatives_ptr,
    rows,
    features,
    split_features,
    splits,
    widths_row_stride,
    widths_feature_stride,
    heights_row_stride,
    heights_feature_stride,
    derivatives_row_stride,
    derivatives_feature_stride,
    bound,
    min_bin_width,
    min_bin_height,
    min_derivative,
    derivative_shift,
    BINS: tl.constexpr,
    PADDED: tl.constexpr,
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
    column = tl.arange(0, PADDED)[None, :]
    is_bin = column < BINS
    is_inner_knot = column < BINS - 1  # knot_next[j] = knot j + 1; the last one is pinned to `bound`
    is_derivative = column < BINS + 1

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
        # Parameters are read through their strides (slices of one parameter tensor, broadcast rows);
        # gradients are written contiguously.
        widths_offsets = (row_64 * widths_row_stride + feature * widths_feature_stride)[:, None] + column
        heights_offsets = (row_64 * heights_row_stride + feature * heights_feature_stride)[:, None] + column
        derivatives_offsets = (row_64 * derivatives_row_stride + feature * derivatives_feature_stride)[
            :, None
        ] + column
        bin_offsets = element[:, None] * BINS + column
        derivative_offsets = element[:, None] * (BINS + 1) + column
        bin_mask = mask[:, None] & is_bin
        derivative_mask = mask[:, None] & is_derivative

        x = tl.load(x_ptr + element, mask=mask, other=0.0).to(tl.float32)
        raw_widths = tl.load(widths_ptr + widths_offsets, mask=bin_mask, other=0.0).to(tl.float32)
        raw_heights = tl.load(heights_ptr + heights_offsets, mask=bin_mask, other=0.0).to(tl.float32)
        raw_derivatives = tl.load(derivatives_ptr + derivatives_offsets, mask=derivative_mask, other=0.0)
        raw_derivatives = raw_derivatives.to(tl.float32)

        # Softmax over the bins, then minimum sizes; knot_next[j] is the right knot of bin j.
        raw_widths = tl.where(is_bin, raw_widths, -1e30)
        width_exp = tl.exp(raw_widths - tl.max(raw_widths, 1)[:, None])
        width_prob = width_exp / tl.sum(width_exp, 1)[:, None]
        bin_widths = tl.where(is_bin, min_bin_width + (1.0 - min_bin_width * BINS) * width_prob, 0.0)
        knot_next_x = tl.where(is_inner_knot, 2.0 * bound * tl.cumsum(bin_widths, 1) - bound, bound)
        raw_heights = tl.where(is_bin, raw_heights, -1e30)
        height_exp = tl.exp(raw_heights - tl.max(raw_heights, 1)[:, None])
        height_prob = height_exp / tl.sum(height_exp, 1)[:, None]
        bin_heights = tl.where(is_bin, min_bin_height + (1.0 - min_bin_height * BINS) * height_prob, 0.0)
        knot_next_y = tl.where(is_inner_knot, 2.0 * bound * tl.cumsum(bin_heights, 1) - bound, bound)

        # Derivatives: min + softplus(raw + shift), softplus(z) = max(z, 0) + log1p(exp(-|z|)).
        shifted = raw_derivatives + derivative_shift
        small = tl.exp(-tl.abs(shifted))
        one_plus = 1.0 + small
        log1p_small = tl.where(
            one_plus == 1.0, small, tl.log(one_plus) * small / tl.where(one_plus == 1.0, 1.0, one_plus - 1.0)
        )
        derivatives = min_derivative + tl.maximum(shifted, 0.0) + log1p_small

        # Bin search over the inner knots of the source axis.
        clamped = tl.minimum(tl.maximum(x, -bound), bound)
        inside = (x >= -bound) & (x <= bound)
        if INVERSE:
            source_knots = knot_next_y
        else:
            source_knots = knot_next_x
        index = tl.sum((is_inner_knot & (clamped[:, None] >= source_knots)).to(tl.int32), 1)
        at_left = column == index[:, None] - 1
        at_right = column == index[:, None]
        x_k = tl.where(index == 0, -bound, tl.sum(tl.where(at_left, knot_next_x, 0.0), 1))
        x_k1 = tl.sum(tl.where(at_right, knot_next_x, 0.0), 1)
        y_k = tl.where(index == 0, -bound, tl.sum(tl.where(at_left, knot_next_y, 0.0), 1))
        y_k1 = tl.sum(tl.where(at_right, knot_next_y, 0.0), 1)
        d_k = tl.sum(tl.where(at_right, derivatives, 0.0), 1)
        d_k1 = tl.sum(tl.where(column == index[:, None] + 1, derivatives, 0.0), 1)
        width = x_k1 - x_k
        height = y_k1 - y_k
        slope = height / width
        curvature = d_k1 + d_k - 2.0 * slope

        if INVERSE:
            offset = clamped - y_k
            a = height * (slope - d_k) + offset * curvature
            b = height * d_k - offset * curvature
            c = -slope * offset
            discriminant = tl.maximum(b * b - 4.0 * a * c, 0.0)
            root = tl.sqrt(discriminant)
            # The root in [0, 1] without cancellation, as in the reference: 2c / (-b - sqrt(D)) when b >= 0,
            # (-b + sqrt(D)) / 2a when b < 0; the unused branch gets a harmless denominator.
            b_nonnegative = b >= 0.0
            xi_raw = tl.where(
                b_nonnegative,
                (2.0 * c) / tl.where(b_nonnegative, -b - root, -1.0),
                (root - b) / tl.where(b_nonnegative, 1.0, 2.0 * a),
            )
        else:
            xi_raw = (clamped - x_k) / width
        xi = tl.minimum(tl.maximum(xi_raw, 0.0), 1.0)
        xi_1m = xi * (1.0 - xi)
        denominator = slope + curvature * xi_1m
        ratio = (slope * xi * xi + d_k * xi_1m) / denominator  # (y - y_k) / height
        derivative_numerator = d_k1 * xi * xi + 2.0 * slope * xi_1m + d_k * (1.0 - xi) * (1.0 - xi)
        if INVERSE:
            spline_out = x_k + xi * width
        else:
            spline_out = y_k + height * ratio
        spline_log_derivative = 2.0 * tl.log(slope) + tl.log(derivative_numerator) - 2.0 * tl.log(denominator)

        below = x < -bound
        left_slope = tl.sum(tl.where(column == 0, derivatives, 0.0), 1)
        right_slope = tl.sum(tl.where(column == BINS, derivatives, 0.0), 1)
        tail_slope = tl.where(below, left_slope, right_slope)
        edge = tl.where(below, -bound, bound)
        if INVERSE:
            tail_out = edge + (x - edge) / tail_slope
        else:
            tail_out = edge + (x - edge) * tail_slope

        if not BACKWARD:
            out = tl.where(inside, spline_out, tail_out)
            log_derivative = tl.where(inside, spline_log_derivative, tl.log(tail_slope))
            if INVERSE:
                log_derivative = -log_derivative
            log_derivative = tl.where(mask, log_derivative, 0.0)
            tl.store(out_ptr + element, out.to(out_ptr.dtype.element_ty), mask=mask)
            ladj_sum += tl.sum(tl.reshape(log_derivative, (BLOCK_ROWS, BLOCK_FEATURES)), 1)
        else:
            grad_out = tl.load(grad_out_ptr + element, mask=mask, other=0.0).to(tl.float32)
            # Gradient w.r.t. the log-derivative of the forward-oriented map.
            grad_log = grad_ladj
            if INVERSE:
                grad_log = -grad_ladj

            # Partial derivatives of ratio (R) and of the log-derivative (L) of the forward map.
            xi_prime = 1.0 - 2.0 * xi
            ratio_xi = (2.0 * slope * xi + d_k * xi_prime - ratio * curvature * xi_prime) / denominator
            ratio_slope = (xi * xi - ratio * (1.0 - 2.0 * xi_1m)) / denominator
            ratio_d_k = (xi_1m - ratio * xi_1m) / denominator
            ratio_d_k1 = -ratio * xi_1m / denominator
            log_xi = (
                2.0 * d_k1 * xi + 2.0 * slope * xi_prime - 2.0 * d_k * (1.0 - xi)
            ) / derivative_numerator - 2.0 * curvature * xi_prime / denominator
            log_slope = (
                2.0 / slope + 2.0 * xi_1m / derivative_numerator - 2.0 * (1.0 - 2.0 * xi_1m) / denominator
            )
            log_d_k = (1.0 - xi) * (1.0 - xi) / derivative_numerator - 2.0 * xi_1m / denominator
            log_d_k1 = xi * xi / derivative_numerator - 2.0 * xi_1m / denominator
            # The clamp of xi to [0, 1] only absorbs round-off (bins are found by the knots), so unlike
            # the reference, gradients pass through it: an inverse root at -1e-8 keeps dx/dy = 1/d_k.

            grad_slope = grad_log * log_slope
            grad_d_k = grad_log * log_d_k
            grad_d_k1 = grad_log * log_d_k1
            if INVERSE:
                # x = x_k + xi * width with y(xi) = input: implicit differentiation of the spline.
                grad_xi = grad_out * width + grad_log * log_xi
                implicit = grad_xi / (height * ratio_xi)
                grad_input = implicit
                grad_x_k = grad_out
                grad_width = grad_out * xi
                grad_y_k = -implicit
                grad_height = -implicit * ratio
                grad_slope += -implicit * height * ratio_slope
                grad_d_k += -implicit * height * ratio_d_k
                grad_d_k1 += -implicit * height * ratio_d_k1
            else:
                grad_xi = grad_out * height * ratio_xi + grad_log * log_xi
                grad_input = grad_xi / width
                grad_x_k = -grad_xi / width
                grad_width = -grad_xi * xi_raw / width
                grad_y_k = grad_out
                grad_height = grad_out * ratio
                grad_slope += grad_out * height * ratio_slope
                grad_d_k += grad_out * height * ratio_d_k
                grad_d_k1 += grad_out * height * ratio_d_k1
            grad_height += grad_slope / width
            grad_width += -grad_slope * slope / width
            grad_x_k += -grad_width
            grad_y_k += -grad_height
            grad_x_k = tl.where(inside, grad_x_k, 0.0)
            grad_x_k1 = tl.where(inside, grad_width, 0.0)
            grad_y_k = tl.where(inside, grad_y_k, 0.0)
            grad_y_k1 = tl.where(inside, grad_height, 0.0)
            grad_d_k = tl.where(inside, grad_d_k, 0.0)
            grad_d_k1 = tl.where(inside, grad_d_k1, 0.0)

            # Linear tails: slope and input gradients.
            if INVERSE:
                grad_tail_input = grad_out / tail_slope
                grad_tail_slope = -grad_out * (x - edge) / (tail_slope * tail_slope) + grad_log / tail_slope
            else:
                grad_tail_input = grad_out * tail_slope
                grad_tail_slope = grad_out * (x - edge) + grad_log / tail_slope
            grad_tail_slope = tl.where(inside, 0.0, grad_tail_slope)
            grad_input = tl.where(inside, grad_input, grad_tail_input)
            tl.store(grad_x_ptr + element, grad_input.to(grad_x_ptr.dtype.element_ty), mask=mask)

            # Scatter onto the knots, then back through cumsum and softmax (sizes -> raw widths).
            grad_raw_widths = _knot_gradient_to_raw(
                grad_x_k, grad_x_k1, at_left, at_right, is_inner_knot, width_prob, bound, min_bin_width, BINS
            )
            tl.store(
                grad_widths_ptr + bin_offsets,
                grad_raw_widths.to(grad_widths_ptr.dtype.element_ty),
                mask=bin_mask,
            )

            grad_raw_heights = _knot_gradient_to_raw(
                grad_y_k,
                grad_y_k1,
                at_left,
                at_right,
                is_inner_knot,
                height_prob,
                bound,
                min_bin_height,
                BINS,
            )
            tl.store(
                grad_heights_ptr + bin_offsets,
                grad_raw_heights.to(grad_heights_ptr.dtype.element_ty),
                mask=bin_mask,
            )

            grad_derivatives = (
                tl.where(at_right, grad_d_k[:, None], 0.0)
                + tl.where(column == index[:, None] + 1, grad_d_k1[:, None], 0.0)
                + tl.where((column == 0) & below[:, None], grad_tail_slope[:, None], 0.0)
                + tl.where((column == BINS) & (x > bound)[:, None], grad_tail_slope[:, None], 0.0)
            )
            # d softplus(z) / dz = sigmoid(z)
            grad_raw_derivatives = grad_derivatives / (1.0 + tl.exp(-shifted))
            tl.store(
                grad_derivatives_ptr + derivative_offsets,
                grad_raw_derivatives.to(grad_derivatives_ptr.dtype.element_ty),
                mask=derivative_mask,
            )

        start += BLOCK_FEATURES

    if not BACKWARD:
        ladj_rows = row_block * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
        tl.store(ladj_partial_ptr + ladj_rows * splits + split, ladj_sum, mask=ladj_rows < rows)
