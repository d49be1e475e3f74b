#include "kvkernels.h"
