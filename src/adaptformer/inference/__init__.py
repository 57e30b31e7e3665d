"""What uses a trained adapter: evaluation, prediction and loading (:mod:`.evaluate`), one frozen backbone serving many
tasks (:mod:`.multitask`), ONNX export (:mod:`.export`), looking inside the adapters (:mod:`.inspection`) and the HTTP
server (:mod:`.serve`). Nothing is imported here: ``import adaptformer`` takes only the multi-task model, and the
other modules (which need the training engine's splits and loaders, or FastAPI) load when used."""
