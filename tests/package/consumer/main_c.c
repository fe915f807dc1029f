/* A C program against the installed package: only <simclr/c_api.h> and simclr::simclr. Checks the
 * hand-derived example (temperature 1, reduction none; docs/math.md) and prints one line. */
#include <math.h>
#include <stdio.h>

#include <simclr/c_api.h>

int main(void) {
  double za[6] = {1, 0, 0, 1, 1, 1}, zb[6] = {1, 0, 0, 1, 1, -1}, values[3];
  const double expected[3] = {2.343702263, 1.959094756, 4.008438580};
  simclr_matrix a = {NULL, 3, 2, 2, SIMCLR_FLOAT64, -1}, b;
  simclr_loss_t loss = NULL;
  int i;
  a.data = za;
  b = a;
  b.data = zb;
  if (simclr_loss_create(1.0, SIMCLR_REDUCTION_NONE, NULL, &loss) != SIMCLR_OK ||
      simclr_forward(loss, &a, &b, NULL, NULL, values, NULL, NULL, NULL) != SIMCLR_OK) {
    fprintf(stderr, "simclr C API call failed: %s\n", simclr_last_error());
    return 1;
  }
  simclr_loss_destroy(loss);
  for (i = 0; i < 3; ++i) {
    if (fabs(values[i] - expected[i]) > 1e-8) {
      fprintf(stderr, "example %d: %.9f, expected %.9f\n", i, values[i], expected[i]);
      return 1;
    }
  }
  printf("ok: simclr C API %s\n", simclr_version());
  return 0;
}
