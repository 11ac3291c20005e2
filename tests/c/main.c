/* A C program using convkit: a convolution with fused relu and max pooling checked against
 * values computed here, then the error paths. Prints "N passed, N failed". */
#include <math.h>
#include <stdio.h>
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
  const char *algos[] = {"auto", "direct", "im2col", "reference"};
  for (int a = 0; a < 4; a++) {
    ConvkitPlan *plan = NULL;
    ConvkitStatus s = convkit_plan_create_json(spec, w, 54, b, 3, algos[a], 0, 2, &plan);
    check(s == ConvkitStatus_Ok && plan != NULL, "create");
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
    check(worst <= 1e-4f, "output matches the values computed in C");
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
  check(convkit_plan_create_json(spec, w, 54, b, 3, "winograd_f6x3", 0, 1, &bad) == ConvkitStatus_Unsupported,
        "unsupported algorithm refused");
  check(convkit_plan_create_json(spec, w, 53, b, 3, NULL, 0, 1, &bad) == ConvkitStatus_InvalidArgument,
        "short weights refused");
  check(convkit_plan_create_json(spec, w, 54, b, 3, NULL, 7, 1, &bad) == ConvkitStatus_InvalidArgument,
        "bad layout refused");
  check(convkit_plan_create_json(NULL, w, 54, b, 3, NULL, 0, 1, &bad) == ConvkitStatus_InvalidArgument,
        "NULL spec refused");
  convkit_plan_destroy(NULL);
  printf("%d passed, %d failed\n", passed, failed);
  return failed != 0;
}
