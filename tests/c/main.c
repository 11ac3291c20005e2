/* A C program using convkit: a convolution with fused relu and max pooling checked against
 * values computed here, then the error paths. Prints "N passed, N failed". */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "convkit.h"

static int passed = 0, failed = 0;

static void check(int ok, const char *what) {
  if (ok) {
    passed++;
  } else {
    failed++;
    fprintf(stderr, "FAILED: %s (last error: %s)\n", what, convkit_last_error_message());
  }
}

/* Worst |got - want| over the largest |want| (SPEC's error in units of S). */
static double scaled_error(const float *got, const double *want, size_t n) {
  double worst = 0, s = 0;
  for (size_t i = 0; i < n; i++) {
    if (fabs(want[i]) > s) s = fabs(want[i]);
    if (fabs(got[i] - want[i]) > worst) worst = fabs(got[i] - want[i]);
  }
  return s > 0 ? worst / s : worst;
}

/* The convolution's gradients through a gradient plan against sums computed here: a square
 * 2-D layer of N images of C x H x H, Cout filters of K x K, the given stride, symmetric
 * padding and groups, on `threads` threads. */
static void gradient_case(int n, int c, int h, int cout, int k, int stride, int pad, int groups, int threads) {
  int oh = (h + 2 * pad - k) / stride + 1, cg = c / groups, og = cout / groups;
  size_t xl = (size_t)n * c * h * h, wl = (size_t)cout * cg * k * k, zl = (size_t)n * cout * oh * oh;
  float *x = malloc(xl * 4), *w = malloc(wl * 4), *dz = malloc(zl * 4);
  float *dx = malloc(xl * 4), *dw = malloc(wl * 4), *db = malloc(cout * 4);
  double *wx = calloc(xl, 8), *ww = calloc(wl, 8), *wb = calloc(cout, 8);
  if (!x || !w || !dz || !dx || !dw || !db || !wx || !ww || !wb) {
    check(0, "gradient test allocation");
    return;
  }
  for (size_t i = 0; i < xl; i++) x[i] = (float)((i * 37) % 23) / 11.0f - 1.0f;
  for (size_t i = 0; i < wl; i++) w[i] = (float)((i * 13) % 17) / 8.0f - 1.0f;
  for (size_t i = 0; i < zl; i++) dz[i] = (float)((i * 29) % 19) / 9.0f - 1.0f;
  for (int b = 0; b < n; b++)
    for (int co = 0; co < cout; co++)
      for (int oy = 0; oy < oh; oy++)
        for (int ox = 0; ox < oh; ox++) {
          double g = dz[(((size_t)b * cout + co) * oh + oy) * oh + ox];
          wb[co] += g;
          for (int ci = 0; ci < cg; ci++)
            for (int ky = 0; ky < k; ky++)
              for (int kx = 0; kx < k; kx++) {
                int iy = oy * stride + ky - pad, ix = ox * stride + kx - pad;
                if (iy < 0 || iy >= h || ix < 0 || ix >= h) continue;
                size_t xi = (((size_t)b * c + (co / og) * cg + ci) * h + iy) * h + ix;
                size_t wi = (((size_t)co * cg + ci) * k + ky) * k + kx;
                wx[xi] += g * w[wi];
                ww[wi] += g * x[xi];
              }
        }
  char spec[256];
  snprintf(spec, sizeof spec,
           "{\"input\": [%d, %d, %d, %d], \"out_channels\": %d, \"kernel\": [%d, %d], \"stride\": [%d, %d],"
           " \"padding\": [%d, %d], \"groups\": %d}",
           n, c, h, h, cout, k, k, stride, stride, pad, pad, groups);
  ConvkitGrad *grad = NULL;
  check(convkit_grad_create_json(spec, w, wl, 0, threads, &grad) == ConvkitStatus_Ok && grad != NULL, "gradient plan");
  check(convkit_grad_data(grad, dz, zl, dx, xl) == ConvkitStatus_Ok, "data gradient");
  check(convkit_grad_weight(grad, x, xl, dz, zl, dw, wl) == ConvkitStatus_Ok, "weight gradient");
  check(convkit_grad_bias(grad, dz, zl, db, cout) == ConvkitStatus_Ok, "bias gradient");
  /* 1e-3 x S: SPEC's Winograd tolerance (the weight gradient of a 3x3 layer may take it). */
  double ex = scaled_error(dx, wx, xl), ew = scaled_error(dw, ww, wl), eb = scaled_error(db, wb, cout);
  printf("gradients of %s on %d thread(s): worst error dx %.1e, dw %.1e, db %.1e x S\n", spec, threads, ex, ew, eb);
  check(ex <= 1e-4, "dx matches the sums computed in C");
  check(ew <= 1e-3, "dw matches the sums computed in C");
  check(eb <= 1e-6, "db matches the sums computed in C");
  /* Error paths: wrong lengths leave the outputs untouched; NULLs are refused. */
  dx[0] = 42.0f;
  check(convkit_grad_data(grad, dz, zl - 1, dx, xl) == ConvkitStatus_InvalidArgument && dx[0] == 42.0f,
        "short dz refused, dx untouched");
  dw[0] = 42.0f;
  check(convkit_grad_weight(grad, x, xl, dz, zl, dw, wl + 1) == ConvkitStatus_InvalidArgument && dw[0] == 42.0f,
        "long dw refused, dw untouched");
  check(convkit_grad_bias(grad, dz, zl, db, cout - 1) == ConvkitStatus_InvalidArgument, "short db refused");
  check(convkit_grad_weight(grad, NULL, xl, dz, zl, dw, wl) == ConvkitStatus_InvalidArgument, "NULL x refused");
  check(convkit_grad_data(NULL, dz, zl, dx, xl) == ConvkitStatus_InvalidArgument, "NULL plan refused");
  /* New weights: doubled, so the data gradient doubles. */
  for (size_t i = 0; i < wl; i++) w[i] *= 2.0f;
  check(convkit_grad_set_weight(grad, w, wl - 1) == ConvkitStatus_InvalidArgument, "short new weights refused");
  check(convkit_grad_set_weight(grad, w, wl) == ConvkitStatus_Ok, "weights replaced");
  check(convkit_grad_data(grad, dz, zl, dx, xl) == ConvkitStatus_Ok, "data gradient after the update");
  for (size_t i = 0; i < xl; i++) wx[i] *= 2.0;
  check(scaled_error(dx, wx, xl) <= 1e-4, "the data gradient follows the new weights");
  convkit_grad_destroy(grad);
  free(x); free(w); free(dz); free(dx); free(dw); free(db); free(wx); free(ww); free(wb);
}

int main(void) {
  /* 2 input channels of 4x4, 3 filters of 3x3 with padding 1, bias, relu, 2x2 max pool. */
  const char *spec =
      "{\"input\": [1, 2, 4, 4], \"out_channels\": 3, \"kernel\": [3, 3], \"padding\": [1, 1],"
      " \"activation\": \"relu\", \"pool\": {\"kind\": \"max\", \"size\": [2, 2]}}";
  float x[2 * 16], w[3 * 2 * 9], b[3] = {0.5f, -100.0f, 0.0f};
  for (int i = 0; i < 32; i++) x[i] = (float)((i * 7) % 11) - 5.0f;
  for (int i = 0; i < 54; i++) w[i] = (float)((i * 5) % 9) * 0.25f - 1.0f;

  /* The expected output, computed directly. */
  float conv[3][4][4], want[3][2][2];
  for (int co = 0; co < 3; co++)
    for (int oy = 0; oy < 4; oy++)
      for (int ox = 0; ox < 4; ox++) {
        double acc = b[co];
        for (int ci = 0; ci < 2; ci++)
          for (int ky = 0; ky < 3; ky++)
            for (int kx = 0; kx < 3; kx++) {
              int y = oy + ky - 1, xx = ox + kx - 1;
              if (y < 0 || y >= 4 || xx < 0 || xx >= 4) continue;
              acc += (double)x[ci * 16 + y * 4 + xx] * w[((co * 2 + ci) * 3 + ky) * 3 + kx];
            }
        conv[co][oy][ox] = acc > 0 ? (float)acc : 0.0f;
      }
  for (int co = 0; co < 3; co++)
    for (int py = 0; py < 2; py++)
      for (int px = 0; px < 2; px++) {
        float m = conv[co][2 * py][2 * px];
        for (int dy = 0; dy < 2; dy++)
          for (int dx = 0; dx < 2; dx++)
            if (conv[co][2 * py + dy][2 * px + dx] > m) m = conv[co][2 * py + dy][2 * px + dx];
        want[co][py][px] = m;
      }

  check(strlen(convkit_version()) > 0, "version string");
  /* The same layer as a struct. */
  ConvkitLayer layer;
  memset(&layer, 0, sizeof layer);
  layer.spatial_rank = 2;
  layer.input[0] = 1; layer.input[1] = 2; layer.input[2] = 4; layer.input[3] = 4;
  layer.out_channels = 3;
  layer.kernel[0] = layer.kernel[1] = 3;
  layer.stride[0] = layer.stride[1] = 1;
  layer.dilation[0] = layer.dilation[1] = 1;
  layer.pad_before[0] = layer.pad_before[1] = layer.pad_after[0] = layer.pad_after[1] = 1;
  layer.groups = 1;
  layer.bias = 1;
  layer.activation = ConvkitActivation_Relu;
  layer.pool = ConvkitPool_Max;
  layer.pool_size[0] = layer.pool_size[1] = 2;
  const char *algos[] = {"auto", "direct", "im2col", "winograd_f2x3", "winograd_f4x3", "winograd_f6x3", "reference"};
  for (int a = 0; a < 14; a++) {
    ConvkitPlan *plan = NULL;
    ConvkitStatus s = a < 7 ? convkit_plan_create_json(spec, w, 54, b, 3, algos[a], 0, 2, &plan)
                            : convkit_plan_create(&layer, w, 54, b, 3, algos[a - 7], 0, 2, &plan);
    check(s == ConvkitStatus_Ok && plan != NULL, "create");
    check(convkit_plan_algo(plan) != NULL && (a % 7 == 0 || strcmp(convkit_plan_algo(plan), algos[a % 7]) == 0),
          "the plan names its algorithm");
    size_t len = 0;
    check(convkit_plan_output_len(plan, &len) == ConvkitStatus_Ok && len == 12, "output length");
    float y[12];
    memset(y, 0, sizeof y);
    check(convkit_plan_run(plan, x, 32, NULL, 0, y, 12) == ConvkitStatus_Ok, "run");
    float worst = 0;
    for (int i = 0; i < 12; i++) {
      float d = fabsf(y[i] - (&want[0][0][0])[i]);
      if (d > worst) worst = d;
    }
    /* SPEC's tolerance: 1e-3 x S for Winograd (S < 20 here), 1e-4 x S otherwise. */
    check(worst <= (strncmp(convkit_plan_algo(plan), "winograd", 8) == 0 ? 2e-2f : 2e-3f),
          "output matches the values computed in C");
    /* Error paths: wrong lengths, NULL pointers; the output stays untouched. */
    y[0] = 42.0f;
    check(convkit_plan_run(plan, x, 31, NULL, 0, y, 12) == ConvkitStatus_InvalidArgument, "short input refused");
    check(y[0] == 42.0f, "output untouched on error");
    check(strstr(convkit_last_error_message(), "input") != NULL, "error message names the tensor");
    check(convkit_plan_run(plan, NULL, 32, NULL, 0, y, 12) == ConvkitStatus_InvalidArgument, "NULL input refused");
    convkit_plan_destroy(plan);
  }
  ConvkitPlan *bad = NULL;
  check(convkit_plan_create_json("{\"input\": [1, 2, 4, 4], \"kernel\": [3, 3]}", w, 54, b, 3, NULL, 0, 1, &bad) ==
            ConvkitStatus_InvalidSpec && bad == NULL,
        "malformed spec refused");
  check(strstr(convkit_last_error_message(), "out_channels") != NULL, "message names the missing field");
  check(convkit_plan_create_json(spec, w, 54, b, 3, "depthwise", 0, 1, &bad) == ConvkitStatus_Unsupported,
        "unsupported algorithm refused");
  layer.spatial_rank = 3;
  check(convkit_plan_create(&layer, w, 54, b, 3, NULL, 0, 1, &bad) == ConvkitStatus_InvalidArgument && bad == NULL,
        "bad struct refused");
  layer.spatial_rank = 2;
  layer.activation = 99;
  check(convkit_plan_create(&layer, w, 54, b, 3, NULL, 0, 1, &bad) == ConvkitStatus_InvalidArgument,
        "unknown activation refused");
  check(strstr(convkit_last_error_message(), "activation") != NULL, "message names the field");
  layer.activation = ConvkitActivation_Relu;
  layer.stride[0] = 0;
  check(convkit_plan_create(&layer, w, 54, b, 3, NULL, 0, 1, &bad) == ConvkitStatus_InvalidSpec, "zero stride refused");
  layer.stride[0] = 1;

  /* Tuner controls: measure mode, then the cache as wisdom text, round-tripped. */
  check(convkit_tuner_set_mode(1, 5) == ConvkitStatus_Ok, "tuner mode set");
  check(convkit_tuner_set_mode(7, 0) == ConvkitStatus_InvalidArgument, "bad tuner mode refused");
  ConvkitPlan *tuned = NULL;
  check(convkit_plan_create(&layer, w, 54, b, 3, NULL, 0, 1, &tuned) == ConvkitStatus_Ok, "tuned plan");
  convkit_plan_destroy(tuned);
  size_t need = 0;
  check(convkit_wisdom_export(NULL, 0, &need) == ConvkitStatus_Ok && need > 0, "wisdom length");
  char small[4];
  check(convkit_wisdom_export(small, sizeof small, &need) == ConvkitStatus_InvalidArgument, "small buffer refused");
  char *text = malloc(need + 1);
  check(text != NULL && convkit_wisdom_export(text, need + 1, &need) == ConvkitStatus_Ok, "wisdom exported");
  check(text != NULL && strstr(text, "convkit-wisdom") != NULL, "wisdom text is wisdom");
  size_t entries = 0;
  check(text != NULL && convkit_wisdom_import(text, &entries) == ConvkitStatus_Ok && entries >= 1, "wisdom imported");
  free(text);
  check(convkit_wisdom_import("{\"format\": 1}", &entries) != ConvkitStatus_Ok, "bad wisdom refused");
  check(convkit_tuner_set_mode(0, 0) == ConvkitStatus_Ok, "heuristic mode restored");
  check(convkit_plan_create_json(spec, w, 53, b, 3, NULL, 0, 1, &bad) == ConvkitStatus_InvalidArgument,
        "short weights refused");
  check(convkit_plan_create_json(spec, w, 54, b, 3, NULL, 7, 1, &bad) == ConvkitStatus_InvalidArgument,
        "bad layout refused");
  check(convkit_plan_create_json(NULL, w, 54, b, 3, NULL, 0, 1, &bad) == ConvkitStatus_InvalidArgument,
        "NULL spec refused");
  convkit_plan_destroy(NULL);

  /* The backward pass: strided and grouped (the GEMM paths), then a 3x3 stride-1 layer of
   * 2 x 16 F(4,3) tiles (the Winograd weight gradient), on one and two threads. */
  gradient_case(2, 4, 9, 6, 3, 2, 1, 2, 1);
  gradient_case(2, 8, 16, 8, 3, 1, 1, 1, 2);
  gradient_case(1, 3, 12, 5, 5, 1, 2, 1, 1);
  ConvkitGrad *bad_grad = NULL;
  check(convkit_grad_create_json(spec, w, 54, 0, 1, &bad_grad) == ConvkitStatus_InvalidSpec && bad_grad == NULL,
        "gradient plan of a layer with an activation and a pool refused");
  check(strstr(convkit_last_error_message(), "convolution alone") != NULL, "message says why");
  layer.activation = ConvkitActivation_None;
  layer.pool = ConvkitPool_None;
  check(convkit_grad_create(&layer, w, 54, 1, 1, &bad_grad) == ConvkitStatus_Ok && bad_grad != NULL,
        "gradient plan from the struct (NHWC)");
  convkit_grad_destroy(bad_grad);
  check(convkit_grad_create(&layer, w, 53, 0, 1, &bad_grad) == ConvkitStatus_InvalidArgument, "short weights refused");
  check(convkit_grad_create(&layer, w, 54, 2, 1, &bad_grad) == ConvkitStatus_InvalidArgument, "bad layout refused");
  convkit_grad_destroy(NULL);
  printf("%d passed, %d failed\n", passed, failed);
  return failed != 0;
}
