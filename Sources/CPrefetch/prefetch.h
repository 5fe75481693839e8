#ifndef DISCD_CPREFETCH_H
#define DISCD_CPREFETCH_H
/* A cache hint Swift has no word for. The simulator hands one multicast to thousands of nodes in
 * turn, each with its own map in memory no cache holds; it asks for the next receivers' lines while
 * it works on the current one, so that their misses overlap instead of following one another. */
static inline void discd_prefetch(const void *p) { __builtin_prefetch(p, 1, 3); }
#endif
