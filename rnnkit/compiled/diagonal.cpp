// The cells without a recurrent matrix: IndRNN (a diagonal recurrent weight,
// rnnkit/cells/indrnn.py), minGRU and minLSTM (none; rnnkit/cells/min_gru.py, min_lstm.py).

#include "common.h"

namespace rnnkit_compiled {

void register_diagonal(pybind11::module_& m) {}

}  // namespace rnnkit_compiled
