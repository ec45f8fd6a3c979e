/* The live fix for service.c: bound the copy, keep the service's own state. */
#include <stdio.h>

extern int requests;                 /* the running service's static counter */
extern const char *salutation(void); /* and its static helper */

int greet(const char *name, char *out, size_t size)
{
    requests++;
    return snprintf(out, size, "%s, %.31s (request %d, patched)", salutation(), name, requests);
}
