/* perfhint.h: the C ABI of the guest-hints crate (libperfhint, crate perfhint-capi).
 *
 * Declares what a program needs to a perf-hint aware hypervisor. Every call
 * is safe with no device present. Functions returning int give 0 on success
 * or a negative PERFHINT_E* code. With PERFHINT_TRACE=FILE in the environment
 * every hint is also appended to FILE as a JSON line (docs/derived-hints.md).
 * Kept in step with guest-hints/capi/src/lib.rs;
 * guest-hints/capi/tests/c_abi.rs compiles and runs a C program against it.
 */
#ifndef PERFHINT_H
#define PERFHINT_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PERFHINT_OK 0
#define PERFHINT_ENODEV (-1)   /* no perf-hint device */
#define PERFHINT_EBUSY (-2)    /* queue full, hint dropped */
#define PERFHINT_EREFUSED (-3) /* the driver refused the message */
#define PERFHINT_EINVAL (-4)   /* bad argument */
#define PERFHINT_TIMEDOUT 1    /* perfhint_phase_begin_wait: begun, but not met in time */

enum perfhint_io_class {
  PERFHINT_IO_NONE = 0,
  PERFHINT_IO_LIGHT = 1,
  PERFHINT_IO_SEQUENTIAL = 2,
  PERFHINT_IO_RANDOM = 3,
  PERFHINT_IO_NETWORK = 4,
};

enum perfhint_locality {
  PERFHINT_LOCALITY_ANY = 0,
  PERFHINT_LOCALITY_SHARED_CACHE = 1,
  PERFHINT_LOCALITY_SAME_NODE = 2,
};

int perfhint_is_connected(void);
int perfhint_parallelism(uint32_t tasks, uint32_t max_useful, double serial_fraction);
int perfhint_memory(uint64_t working_set, uint64_t peak, uint64_t growth_per_sec);
int perfhint_io(int io_class, uint64_t bytes_per_sec);
int perfhint_placement(int relocatable, int monolithic, int locality);
/* The data set the work reads most, by a name the operator also uses (1 to
 * 48 bytes of UTF-8): the hypervisor may run the work where that data is.
 * PERFHINT_EINVAL for a NULL, empty, non-UTF-8 or longer name. */
int perfhint_data_set(const char *name);
uint32_t perfhint_phase_begin(const char *name, uint32_t expected_ms);
/* Begins a phase wanting `parallelism` CPUs and `working_set` bytes (0: not
 * asked for), then waits until the guest has them online (online CPUs,
 * MemAvailable) or `timeout_ms` passes, checking every 10 ms. Returns
 * PERFHINT_OK (met) or PERFHINT_TIMEDOUT, with the phase begun and its id in
 * *phase_id either way; PERFHINT_EINVAL (no phase begun) when name is NULL or
 * not UTF-8 or phase_id is NULL. */
int perfhint_phase_begin_wait(const char *name, uint32_t expected_ms, uint32_t parallelism,
                              uint64_t working_set, uint32_t timeout_ms, uint32_t *phase_id);
int perfhint_phase_end(uint32_t phase_id);

#ifdef __cplusplus
}
#endif
#endif /* PERFHINT_H */
