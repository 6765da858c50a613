/* predict-work: the validation workload of `perfvmm predict` (issue 13).
 * Three named phases whose work sits in named functions, each of which can
 * be made faster or slower from the command line, so that "function F
 * 10 % faster" can be made true and run:
 *
 *   predict-work [-u MILLIONS] [-t THREADS] [-m MIB] [FUNCTION=FACTOR ...]
 *
 *   load   serial:    parse_input (and, with -m, MIB MiB of input written)
 *   solve  parallel:  kernel on each of THREADS (default 4) threads,
 *                     then reduce, serial
 *   write  serial:    checksum
 *
 * Work is counted in units of MILLIONS (default 20) xorshift steps:
 * parse_input 4 units, kernel 8 units split over the threads, reduce 1,
 * checksum 3. FACTOR scales a function's units (kernel=0.9 is 10 % less
 * kernel work). With -m, the input stays in memory until the solve phase
 * ends, so that the program's peak memory is known (perfvmm predict's
 * memory checks run it in memory cgroups above and below its need). Phases
 * are announced with libperfhint's phase hints, so
 * that `perfhint profile` names them. Prints "predict-work: done in N ms".
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

uint32_t perfhint_phase_begin(const char *name, uint32_t expected_ms);
int perfhint_phase_end(uint32_t phase_id);

static const char *names[] = {"parse_input", "kernel", "reduce", "checksum"};
static double units[] = {4, 8, 1, 3};
static double factor[] = {1, 1, 1, 1};
static double million = 20;
static int threads = 4;
static long input_mib;
static volatile uint64_t sink;
/* Where the input is held, out of the compiler's sight (else it could drop
 * writes to memory that is freed unread). */
static char *volatile held;

static uint64_t steps(int f) { return (uint64_t)(units[f] * factor[f] * million * 1e6); }

/* The same loop in every function, kept apart (noinline) so that the
 * profiler sees each one by name. */
#define SPIN(n, seed)                      \
  do {                                     \
    uint64_t x = (seed) | 1;               \
    for (uint64_t i = 0; i < (n); i++) {   \
      x ^= x << 13;                        \
      x ^= x >> 7;                         \
      x ^= x << 17;                        \
    }                                      \
    sink += x;                             \
  } while (0)

__attribute__((noinline)) static void parse_input(uint64_t n) { SPIN(n, 11); }
__attribute__((noinline)) static void kernel(uint64_t n) { SPIN(n, 13); }
__attribute__((noinline)) static void reduce(uint64_t n) { SPIN(n, 17); }
__attribute__((noinline)) static void checksum(uint64_t n) { SPIN(n, 19); }

static void *worker(void *arg) {
  kernel((uint64_t)(uintptr_t)arg);
  return NULL;
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void usage(void) {
  fprintf(stderr, "usage: predict-work [-u MILLIONS] [-t THREADS] [-m MIB] [FUNCTION=FACTOR ...]\n");
  exit(2);
}

static void parse_args(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "-u") && i + 1 < argc) {
      million = atof(argv[++i]);
    } else if (!strcmp(argv[i], "-t") && i + 1 < argc) {
      threads = atoi(argv[++i]);
    } else if (!strcmp(argv[i], "-m") && i + 1 < argc) {
      input_mib = atol(argv[++i]);
    } else {
      char *eq = strchr(argv[i], '=');
      int found = 0;
      for (int f = 0; eq && f < 4; f++) {
        if ((size_t)(eq - argv[i]) == strlen(names[f]) && !strncmp(argv[i], names[f], eq - argv[i])) {
          factor[f] = atof(eq + 1);
          found = 1;
        }
      }
      if (!found) usage();
    }
  }
  if (million <= 0 || threads < 1 || threads > 64 || input_mib < 0 || input_mib > (1 << 20)) usage();
  for (int f = 0; f < 4; f++)
    if (factor[f] < 0) usage();
}

int main(int argc, char **argv) {
  pthread_t t[64];
  parse_args(argc, argv);
  double start = now_ms();

  uint32_t p = perfhint_phase_begin("load", 0);
  char *input = NULL;
  if (input_mib) {
    input = malloc((size_t)input_mib << 20);
    if (!input) {
      fprintf(stderr, "predict-work: no memory for %ld MiB of input\n", input_mib);
      return 1;
    }
    held = input;
    memset(input, 0x5a, (size_t)input_mib << 20);
  }
  parse_input(steps(0));
  perfhint_phase_end(p);

  p = perfhint_phase_begin("solve", 0);
  for (int i = 0; i < threads; i++)
    pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)(steps(1) / threads));
  for (int i = 0; i < threads; i++)
    pthread_join(t[i], NULL);
  reduce(steps(2));
  free(input);
  perfhint_phase_end(p);

  p = perfhint_phase_begin("write", 0);
  checksum(steps(3));
  perfhint_phase_end(p);

  printf("predict-work: done in %.0f ms\n", now_ms() - start);
  return 0;
}
