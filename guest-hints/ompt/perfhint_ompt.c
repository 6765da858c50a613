/* libperfhint_ompt.so: an OMPT tool that turns OpenMP parallel regions into
 * perf-hint phase and parallelism hints, with no change to the program.
 *
 *   OMP_TOOL_LIBRARIES=/path/libperfhint_ompt.so ./openmp-program
 *
 * Regions are coalesced: the first one opens a phase "omp" and hints its team
 * size; later regions keep the phase open and add a hint only when a larger
 * team appears; a timer thread ends the phase once no region has run for
 * PERFHINT_OMPT_IDLE_MS (default 200) milliseconds (checked four times per
 * period, so 200 to 250 ms after the last region ends). Thousands of regions a
 * second so become one phase and a handful of hints. Hints go through
 * libperfhint (guest-hints/capi, linked statically), which does nothing when
 * there is no /dev/perfhint.
 *
 * PERFHINT_TRACE=<file> appends one JSON line per region begin and end:
 *   {"t_ns": <CLOCK_MONOTONIC ns>, "event": "parallel_begin", "threads": <team size>}
 *   {"t_ns": <CLOCK_MONOTONIC ns>, "event": "parallel_end"}
 * ("0" and "1" are guest-hints' own on/off switch for the same variable and
 * name no file.)
 *
 * See docs/derived-hints-ompt.md for the design and its measured overhead.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <omp-tools.h>

#include "perfhint.h"

#define PHASE_NAME "omp"
#define DEFAULT_IDLE_MS 200
#define MAX_IDLE_MS 60000
/* The trace descriptor is moved this high so that a program closing and
 * reopening its low descriptors does not end up sharing it. */
#define TRACE_FD_MIN 100

/* ---- time ---------------------------------------------------------------- */

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static struct timespec ns_to_timespec(uint64_t ns) {
  struct timespec ts;
  ts.tv_sec = (time_t)(ns / 1000000000u);
  ts.tv_nsec = (long)(ns % 1000000000u);
  return ts;
}

/* ---- trace file ---------------------------------------------------------- */

static _Atomic int trace_fd = -1;
/* A regular file cannot raise SIGPIPE; anything else (a FIFO, a pipe behind
 * /dev/stderr) is written with SIGPIPE blocked. */
static int trace_regular;

static void trace_open(void) {
  const char *path = getenv("PERFHINT_TRACE");
  if (path == NULL || path[0] == '\0' || strcmp(path, "0") == 0 || strcmp(path, "1") == 0)
    return;
  /* O_NONBLOCK: opening a FIFO with no reader fails instead of hanging. */
  int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, 0644);
  if (fd < 0)
    return;
  struct stat st;
  trace_regular = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
  int high = fcntl(fd, F_DUPFD_CLOEXEC, TRACE_FD_MIN);
  if (high >= 0) {
    close(fd);
    fd = high;
  }
  atomic_store(&trace_fd, fd);
}

/* One line, one write(2); a failure is ignored and errno left as it was. */
static void trace_write(const char *line, size_t len) {
  int fd = atomic_load_explicit(&trace_fd, memory_order_relaxed);
  if (fd < 0)
    return;
  int saved = errno;
  if (trace_regular) {
    ssize_t n = write(fd, line, len);
    (void)n;
  } else {
    sigset_t pipe_set, old, pending;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    int was_pending = sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1;
    ssize_t n = write(fd, line, len);
    if (n < 0 && errno == EPIPE && !was_pending) {
      struct timespec zero = {0, 0};
      sigtimedwait(&pipe_set, NULL, &zero); /* take back our own SIGPIPE */
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
  }
  errno = saved;
}

static size_t put_str(char *p, const char *s) {
  size_t n = strlen(s);
  memcpy(p, s, n);
  return n;
}

static size_t put_u64(char *p, uint64_t v) {
  char tmp[20];
  size_t n = 0;
  do {
    tmp[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v != 0);
  for (size_t i = 0; i < n; i++)
    p[i] = tmp[n - 1 - i];
  return n;
}

static void trace_begin(uint64_t t, unsigned threads) {
  char line[96];
  size_t n = put_str(line, "{\"t_ns\": ");
  n += put_u64(line + n, t);
  n += put_str(line + n, ", \"event\": \"parallel_begin\", \"threads\": ");
  n += put_u64(line + n, threads);
  n += put_str(line + n, "}\n");
  trace_write(line, n);
}

static void trace_end(uint64_t t) {
  char line[64];
  size_t n = put_str(line, "{\"t_ns\": ");
  n += put_u64(line + n, t);
  n += put_str(line + n, ", \"event\": \"parallel_end\"}\n");
  trace_write(line, n);
}

/* ---- coalescing ------------------------------------------------------------
 *
 * Hot path (every region, no trace file): one atomic add at parallel-begin,
 * one load at the primary thread's implicit-task begin, one atomic add at
 * parallel-end; no clock is read. The mutex is taken only to open a phase or
 * hint a larger team, and by the timer thread, which while a phase is open
 * ticks four times per idle period to see whether regions still come, and
 * otherwise sleeps until a phase opens.
 *
 * A phase ends when, at a tick, no region is running and none has ended for
 * an idle period counted from the first tick that saw the last one end:
 * between idle and 1.25 x idle after the last region ends.
 *
 * Closing races with a region beginning; both sides use sequentially
 * consistent atomics in opposite order:
 *   region:  regions += 1 (begin);  then read fast (0: take the lock)
 *   timer:   fast = 0;  then read regions (changed: keep the phase)
 * so either the timer sees the region and keeps the phase, or the region sees
 * the phase closing and, under the lock, opens the next one.
 */

static uint64_t idle_ns = (uint64_t)DEFAULT_IDLE_MS * 1000000u;

/* Low 32 bits: regions running; high 32 bits: regions ended (wrapping). */
static _Atomic uint64_t regions;
#define REGION_BEGIN ((uint64_t)1)
#define REGION_END (((uint64_t)1 << 32) - 1) /* one more ended, one fewer running */
#define RUNNING(w) ((uint32_t)(w))

/* The fast path's view: the largest team hinted in the open phase, or 0 when
 * every region must take the slow path (no phase, closing, or no timer). */
static _Atomic unsigned fast;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake; /* on CLOCK_MONOTONIC: see init_wake */
/* Under lock: */
static int in_phase;
static uint32_t phase_id;
static unsigned hinted;        /* largest team hinted in this phase */
static int timer_started;
static int stopping;
static pthread_t timer;
static uint64_t lazy_begin_ns; /* no timer thread: when the last region began */

static void init_wake(void) {
  pthread_condattr_t attr;
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  pthread_cond_init(&wake, &attr);
  pthread_condattr_destroy(&attr);
}

/* Ends the phase (lock held). */
static void close_phase(void) {
  in_phase = 0;
  hinted = 0;
  atomic_store(&fast, 0);
  perfhint_phase_end(phase_id);
}

static void *timer_main(void *arg) {
  (void)arg;
  uint64_t tick = idle_ns / 4;
  uint64_t seen = 0;       /* the region word at the last tick */
  uint64_t quiet_since = 0; /* the first tick that saw it as it is */
  pthread_mutex_lock(&lock);
  while (!stopping) {
    if (!in_phase) {
      pthread_cond_wait(&wake, &lock);
      quiet_since = 0; /* a new phase: start counting afresh */
      continue;
    }
    uint64_t now = now_ns();
    uint64_t w = atomic_load(&regions);
    if (quiet_since == 0 || w != seen || RUNNING(w) != 0) {
      seen = w;
      quiet_since = now;
    } else if (now - quiet_since >= idle_ns) {
      atomic_store(&fast, 0);
      if (atomic_load(&regions) == seen) {
        close_phase();
        continue;
      }
      atomic_store(&fast, hinted); /* a region came after all */
      quiet_since = now;
    }
    struct timespec ts = ns_to_timespec(now + tick);
    pthread_cond_timedwait(&wake, &lock, &ts);
  }
  pthread_mutex_unlock(&lock);
  return NULL;
}

/* Starts the timer thread (lock held), with every signal blocked in it so
 * that the program's signals go to its own threads. */
static void start_timer(void) {
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  timer_started = pthread_create(&timer, NULL, timer_main, NULL) == 0;
  pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* A region with a team of `threads` has begun and the fast path could not
 * settle it. */
static void region_begin_slow(unsigned threads) {
  int saved = errno;
  pthread_mutex_lock(&lock);
  if (stopping) {
    pthread_mutex_unlock(&lock);
    errno = saved;
    return;
  }
  if (!timer_started)
    start_timer();
  if (!timer_started) {
    /* No timer thread (it could not be created): every region comes here,
     * and a phase ends when a region begins more than an idle period after
     * the one before it, with nothing else running. */
    uint64_t now = now_ns();
    if (in_phase && RUNNING(atomic_load(&regions)) <= 1 && now - lazy_begin_ns >= idle_ns)
      close_phase();
    lazy_begin_ns = now;
  }
  if (!in_phase) {
    phase_id = perfhint_phase_begin(PHASE_NAME, 0);
    in_phase = 1;
    hinted = 0;
    pthread_cond_signal(&wake);
  }
  if (threads > hinted) {
    perfhint_parallelism(threads, threads, 0.0);
    hinted = threads;
  }
  if (timer_started)
    atomic_store(&fast, hinted);
  pthread_mutex_unlock(&lock);
  errno = saved;
}

/* ---- OMPT callbacks -------------------------------------------------------- */

static void on_parallel_begin(ompt_data_t *encountering_task_data,
                              const ompt_frame_t *encountering_task_frame,
                              ompt_data_t *parallel_data, unsigned int requested_parallelism,
                              int flags, const void *codeptr_ra) {
  (void)encountering_task_data;
  (void)encountering_task_frame;
  (void)requested_parallelism;
  (void)codeptr_ra;
  if (!(flags & ompt_parallel_team))
    return; /* a league of teams: not a thread team */
  atomic_fetch_add(&regions, REGION_BEGIN);
  /* The team size is known at the primary thread's implicit-task begin,
   * which follows on this thread; keep the begin time until then. */
  if (atomic_load_explicit(&trace_fd, memory_order_relaxed) >= 0)
    parallel_data->value = now_ns();
}

static void on_implicit_task(ompt_scope_endpoint_t endpoint, ompt_data_t *parallel_data,
                             ompt_data_t *task_data, unsigned int actual_parallelism,
                             unsigned int index, int flags) {
  (void)task_data;
  if (endpoint != ompt_scope_begin || index != 0 || !(flags & ompt_task_implicit))
    return; /* workers, ends and initial tasks */
  unsigned threads = actual_parallelism;
  if (atomic_load_explicit(&trace_fd, memory_order_relaxed) >= 0 && parallel_data != NULL)
    trace_begin(parallel_data->value, threads);
  if (threads <= atomic_load(&fast))
    return;
  region_begin_slow(threads);
}

static void on_parallel_end(ompt_data_t *parallel_data, ompt_data_t *encountering_task_data,
                            int flags, const void *codeptr_ra) {
  (void)parallel_data;
  (void)encountering_task_data;
  (void)codeptr_ra;
  if (!(flags & ompt_parallel_team))
    return;
  atomic_fetch_add(&regions, REGION_END);
  if (atomic_load_explicit(&trace_fd, memory_order_relaxed) >= 0)
    trace_end(now_ns());
}

/* ---- fork ------------------------------------------------------------------ */

static void before_fork(void) { pthread_mutex_lock(&lock); }

static void after_fork_parent(void) { pthread_mutex_unlock(&lock); }

/* The child has no timer thread (nor the parent's waiters on `wake`), and
 * the parent's phase is the parent's. */
static void after_fork_child(void) {
  init_wake();
  in_phase = 0;
  hinted = 0;
  timer_started = 0;
  atomic_store(&fast, 0);
  atomic_store(&regions, 0);
  pthread_mutex_unlock(&lock);
}

/* ---- tool entry points ----------------------------------------------------- */

static void read_idle_setting(void) {
  const char *v = getenv("PERFHINT_OMPT_IDLE_MS");
  if (v == NULL || v[0] == '\0')
    return;
  char *end = NULL;
  int saved = errno;
  errno = 0;
  unsigned long ms = strtoul(v, &end, 10);
  if (errno == 0 && end != NULL && *end == '\0' && ms >= 1 && ms <= MAX_IDLE_MS)
    idle_ns = (uint64_t)ms * 1000000u;
  errno = saved;
}

static int tool_initialize(ompt_function_lookup_t lookup, int initial_device_num,
                           ompt_data_t *tool_data) {
  (void)initial_device_num;
  (void)tool_data;
  int saved = errno;
  ompt_set_callback_t set_callback = (ompt_set_callback_t)lookup("ompt_set_callback");
  if (set_callback == NULL) {
    errno = saved;
    return 0; /* tool off */
  }
  init_wake();
  read_idle_setting();
  trace_open();
  pthread_atfork(before_fork, after_fork_parent, after_fork_child);
  /* libomp 14 delivers all three always; "sometimes" would do too. */
  int ok = set_callback(ompt_callback_parallel_begin, (ompt_callback_t)on_parallel_begin) >=
               ompt_set_sometimes &&
           set_callback(ompt_callback_parallel_end, (ompt_callback_t)on_parallel_end) >=
               ompt_set_sometimes &&
           set_callback(ompt_callback_implicit_task, (ompt_callback_t)on_implicit_task) >=
               ompt_set_sometimes;
  if (!ok) {
    int fd = atomic_exchange(&trace_fd, -1);
    if (fd >= 0)
      close(fd);
  }
  errno = saved;
  return ok;
}

static void tool_finalize(ompt_data_t *tool_data) {
  (void)tool_data;
  int saved = errno;
  pthread_mutex_lock(&lock);
  stopping = 1;
  if (in_phase)
    close_phase();
  int joinable = timer_started;
  pthread_cond_broadcast(&wake);
  pthread_mutex_unlock(&lock);
  if (joinable)
    pthread_join(timer, NULL);
  int fd = atomic_exchange(&trace_fd, -1);
  if (fd >= 0)
    close(fd);
  errno = saved;
}

__attribute__((visibility("default"))) ompt_start_tool_result_t *
ompt_start_tool(unsigned int omp_version, const char *runtime_version) {
  (void)omp_version;
  (void)runtime_version;
  static ompt_start_tool_result_t result = {tool_initialize, tool_finalize, {0}};
  return &result;
}
