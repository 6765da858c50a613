/* An OMPT tool that registers the same callbacks as libperfhint_ompt.so and
 * does nothing in them: what libomp's own OMPT machinery costs a program,
 * apart from the tool's work (bench.sh's "empty" runs). Built with
 * -DIDLE_THREAD it also starts a thread that only sleeps, as the tool's
 * timer thread mostly does (bench.sh's "idle" runs). */
#include <omp-tools.h>

#ifdef IDLE_THREAD
#include <pthread.h>
#include <unistd.h>

static void *sleep_forever(void *arg) {
  (void)arg;
  for (;;)
    pause();
  return NULL;
}
#endif

static void on_parallel_begin(ompt_data_t *a, const ompt_frame_t *b, ompt_data_t *c,
                              unsigned int d, int e, const void *f) {
  (void)a, (void)b, (void)c, (void)d, (void)e, (void)f;
}

static void on_parallel_end(ompt_data_t *a, ompt_data_t *b, int c, const void *d) {
  (void)a, (void)b, (void)c, (void)d;
}

static void on_implicit_task(ompt_scope_endpoint_t a, ompt_data_t *b, ompt_data_t *c,
                             unsigned int d, unsigned int e, int f) {
  (void)a, (void)b, (void)c, (void)d, (void)e, (void)f;
}

static int initialize(ompt_function_lookup_t lookup, int device, ompt_data_t *data) {
  (void)device, (void)data;
  ompt_set_callback_t set = (ompt_set_callback_t)lookup("ompt_set_callback");
  if (set == NULL)
    return 0;
  set(ompt_callback_parallel_begin, (ompt_callback_t)on_parallel_begin);
  set(ompt_callback_parallel_end, (ompt_callback_t)on_parallel_end);
  set(ompt_callback_implicit_task, (ompt_callback_t)on_implicit_task);
#ifdef IDLE_THREAD
  pthread_t thread;
  pthread_create(&thread, NULL, sleep_forever, NULL);
#endif
  return 1;
}

static void finalize(ompt_data_t *data) { (void)data; }

ompt_start_tool_result_t *ompt_start_tool(unsigned int version, const char *runtime) {
  (void)version, (void)runtime;
  static ompt_start_tool_result_t result = {initialize, finalize, {0}};
  return &result;
}
